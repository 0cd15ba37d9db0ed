//! Generates the DPDK bindings (`dpdk-sys`) from the installed DPDK 22.11.
//!
//! * `pkg-config libdpdk` gives the include paths, the `-include rte_config.h`
//!   and the `-march` DPDK's inline functions need, and the link line.
//! * bindgen's `wrap_static_fns` turns every static-inline function into an
//!   exported wrapper, compiled here with the same flags.
//! * `pmd/sys/shim.c` exposes what DPDK only has as macros (`rte_errno`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config").args(args).arg("libdpdk").output().unwrap_or_else(|e| {
        panic!("cannot run pkg-config ({e}); install pkg-config and libdpdk-dev (ci/setup.sh does)")
    });
    if !out.status.success() {
        panic!(
            "pkg-config libdpdk failed: {}\nDPDK 22.11 development files are missing: \
             apt-get install dpdk dpdk-dev libdpdk-dev (ci/setup.sh does this)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).expect("pkg-config output is UTF-8").split_whitespace().map(str::to_owned).collect()
}

fn main() {
    println!("cargo:rerun-if-changed=pmd/sys/wrapper.h");
    println!("cargo:rerun-if-changed=pmd/sys/shim.h");
    println!("cargo:rerun-if-changed=pmd/sys/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let version = pkg_config(&["--modversion"]).join("");
    if !version.starts_with("22.11") {
        println!("cargo:warning=built against DPDK {version}; VirtualWire is written for 22.11");
    }
    let cflags = pkg_config(&["--cflags"]);
    let libs = pkg_config(&["--libs"]);

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let wrap_path = out.join("dpdk_static_wrappers");

    let bindings = bindgen::Builder::default()
        .header("pmd/sys/wrapper.h")
        .clang_args(cflags.iter().filter(|f| !f.starts_with("-march")))
        .clang_arg("-Ipmd/sys")
        .allowlist_function(
            "rte_(eal|eth|pktmbuf|mempool|lcore|dev|vdev|ring|vhost|socket|strerror|get_|rdtsc|mbuf|delay|exit).*",
        )
        .allowlist_function("rte_eal_.*|rte_get_tsc_hz|rte_get_main_lcore|rte_get_next_lcore")
        .allowlist_function("vw_.*")
        .allowlist_type(
            "rte_mbuf|rte_eth_(conf|stats|link|dev_info|rxconf|txconf|xstat|xstat_name|dev_owner)|rte_ether_addr",
        )
        .allowlist_var("RTE_ETH_.*|RTE_MBUF_F_.*|RTE_MAX_.*|SOCKET_ID_ANY|LCORE_ID_ANY|RTE_ETHER_.*")
        // Packed-and-aligned structs bindgen cannot express (E0588). The
        // parsing layer has its own header views in `wire/`.
        .opaque_type("rte_arp_hdr|rte_arp_ipv4|rte_gtp_psc_generic_hdr|rte_l2tpv2_combined_msg_hdr")
        .derive_debug(false)
        .derive_default(true)
        .layout_tests(false)
        .prepend_enum_name(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrap_path)
        .generate()
        .expect("bindgen could not generate the DPDK bindings");
    bindings.write_to_file(out.join("dpdk_bindings.rs")).expect("cannot write the bindings");

    let mut build = cc::Build::new();
    build
        .file(wrap_path.with_extension("c"))
        .file("pmd/sys/shim.c")
        .include("pmd/sys")
        .include(env::current_dir().unwrap())
        .opt_level(3)
        .warnings(false);
    for flag in &cflags {
        if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        } else {
            build.flag(flag);
        }
    }
    build.compile("vw_dpdk_wrappers");

    for lib in &libs {
        if let Some(dir) = lib.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(name) = lib.strip_prefix("-l") {
            if name.starts_with(':') {
                println!("cargo:rustc-link-arg=-l{name}");
            } else {
                println!("cargo:rustc-link-lib=dylib={name}");
            }
        } else {
            println!("cargo:rustc-link-arg={lib}");
        }
    }
}
