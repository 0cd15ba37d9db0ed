//! A few seconds of the benchmark, so vwperf and vwbench never break
//! silently: every scenario runs once, briefly; vwbench fails if a run
//! moved no frames or the fabric's mbufs did not return to their idle count.
//! The real measurement is `vwbench --write docs/perf.md` (docs/perf.md).

use std::process::Command;
use vw_e2e::*;

#[test]
fn benchmark_smoke_run() {
    let Some(env) = setup("bench_smoke", &["dpdk-testpmd", "stdbuf"]) else { return };
    if !require_hugepages("bench_smoke") {
        return;
    }
    let out = Command::new(env.bin.join("vwbench")).arg("--smoke").output().expect("run vwbench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vwbench --smoke failed:\n{err}\n{}", String::from_utf8_lossy(&out.stdout));
    let table = String::from_utf8_lossy(&out.stdout);
    for s in
        ["fabric loopback wire", "fabric encap -> net_ring -> decap", "fabric classify+encap", "fabric classify+decap"]
    {
        assert!(table.contains(s), "no result for {s}:\n{table}");
    }
}

/// The directory's benchmark, briefly: it asserts on every step itself (each
/// half set up, each move applied, no fabric panicked).
#[test]
fn directory_benchmark_smoke_run() {
    let Some(env) = setup("dirbench_smoke", &["etcd", "etcdctl"]) else { return };
    let out = Command::new(env.bin.join("vw-dirbench"))
        .args(["--connects", "3", "--moves", "3", "--wires", "20"])
        .output()
        .expect("run vw-dirbench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vw-dirbench failed:\n{}\n{table}", String::from_utf8_lossy(&out.stderr));
    for s in ["connect by name on h1", "move: endpoint deleted", "20 wires by name across 3 fabrics", "etcd keys"] {
        assert!(table.contains(s), "no result for {s}:\n{table}");
    }
}
