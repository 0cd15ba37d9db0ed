//! Ethernet ports: hot-plug, configuration, start/stop, link, stats, MTU.
//!
//! A port is identified by its DPDK port id. The control plane owns port
//! setup; workers only call `rx_burst`/`tx_burst` (in `mbuf.rs`) on queues
//! of started ports, each queue from exactly one worker.

use crate::error::{check, Error, Result};
use crate::mempool::Mempool;
use std::ffi::{CStr, CString};
use std::fmt;

/// A DPDK ethdev port id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// RSS hash types (rte_ethdev.h RTE_ETH_RSS_*; function-like macros that
// bindgen cannot evaluate).
const RSS_IPV4: u64 = 1 << 2;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
const RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
const RSS_IPV6: u64 = 1 << 8;
const RSS_NONFRAG_IPV6_TCP: u64 = 1 << 10;
const RSS_NONFRAG_IPV6_UDP: u64 = 1 << 11;
const RSS_WANTED: u64 = RSS_IPV4
    | RSS_NONFRAG_IPV4_TCP
    | RSS_NONFRAG_IPV4_UDP
    | RSS_NONFRAG_IPV4_OTHER
    | RSS_IPV6
    | RSS_NONFRAG_IPV6_TCP
    | RSS_NONFRAG_IPV6_UDP;

/// How to set up a port.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// RX queues (each polled by one worker).
    pub rx_queues: u16,
    /// TX queues (each used by one worker).
    pub tx_queues: u16,
    /// RX descriptors per queue (adjusted to the device's limits).
    pub rx_desc: u16,
    /// TX descriptors per queue (adjusted to the device's limits).
    pub tx_desc: u16,
    /// Pool RX queues take buffers from.
    pub pool: Mempool,
    /// MTU to set, if any (else the device default).
    pub mtu: Option<u16>,
    /// Receive every frame whatever its destination MAC.
    pub promiscuous: bool,
    /// Ask the device to verify UDP checksums on receive, if it can (the
    /// verdict is in each mbuf's flags: [`crate::Mbuf::l4_checksum_good`]).
    pub rx_l4_checksum: bool,
}

/// `RTE_ETH_RX_OFFLOAD_UDP_CKSUM` (a function-like macro in rte_ethdev.h).
const RX_OFFLOAD_UDP_CKSUM: u64 = 1 << 2;

/// Static facts about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// ethdev name (e.g. `net_tap0` or a PCI address).
    pub name: String,
    /// PMD name (e.g. `net_tap`).
    pub driver: String,
    /// Interface index of the kernel netdev behind the port, if any.
    pub if_index: u32,
    /// Largest RX/TX queue counts the device accepts.
    pub max_rx_queues: u16,
    /// See `max_rx_queues`.
    pub max_tx_queues: u16,
    /// Smallest and largest MTU.
    pub min_mtu: u16,
    /// See `min_mtu`.
    pub max_mtu: u16,
}

/// Link state as the PMD reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 if unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Basic device counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// RX packets dropped by the device (no free descriptor).
    pub imissed: u64,
    /// Erroneous RX packets.
    pub ierrors: u64,
    /// Failed TX packets.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid(format!("{what} {s:?} contains a NUL byte")))
}

/// Largest number of ports this DPDK build supports (RTE_MAX_ETHPORTS).
pub fn max_ports() -> u16 {
    // SAFETY: returns a compile-time constant.
    unsafe { dpdk_sys::vw_max_ethports() as u16 }
}

/// Headroom every mbuf reserves in front of the packet (RTE_PKTMBUF_HEADROOM).
pub fn mbuf_headroom() -> u16 {
    // SAFETY: returns a compile-time constant.
    unsafe { dpdk_sys::vw_pktmbuf_headroom() as u16 }
}

/// The ports of a probed device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// Its ethdev ports.
    pub ports: Vec<PortId>,
    /// False if the device was already present before the probe (a PCI NIC
    /// probed at EAL start, say): whoever undoes the probe must not remove it.
    pub created: bool,
}

/// Probes (hot-plugs) the device described by `devargs` and returns its
/// ethdev ports. A device that is already present is not an error.
///
/// A probe that fails can leave behind the ports it made before failing (a
/// multi-port device that ran out of port ids, say): they are closed, and
/// running out of port ids is [`Error::PortLimit`].
pub fn probe(devargs: &str) -> Result<Probed> {
    let c = cstring(devargs, "device arguments")?;
    let before = existing();
    // SAFETY: c is a valid C string for the duration of the call.
    let rc = unsafe { dpdk_sys::rte_dev_probe(c.as_ptr()) };
    if rc < 0 && -rc != libc::EEXIST {
        let after = existing();
        for p in after.iter().filter(|p| !before.contains(p)) {
            // SAFETY: the port was made by the probe that just failed; it was
            // never configured or started and nothing else refers to it.
            unsafe { dpdk_sys::rte_eth_dev_close(p.0) };
        }
        if after.len() >= usize::from(max_ports()) {
            return Err(Error::PortLimit { devargs: devargs.to_owned(), max: max_ports() });
        }
        return Err(Error::from_errno(format!("rte_dev_probe({devargs})"), -rc));
    }
    let ports = ports_matching(devargs)?;
    if ports.is_empty() {
        return Err(Error::NoPort(devargs.to_owned()));
    }
    Ok(Probed { ports, created: rc >= 0 })
}

/// The ethdev ports that exist now.
pub fn existing() -> Vec<PortId> {
    (0..max_ports())
        // SAFETY: a plain query on any port id.
        .filter(|&p| unsafe { dpdk_sys::rte_eth_dev_is_valid_port(p) } == 1)
        .map(PortId)
        .collect()
}

/// Ports whose device matches `devargs` (by DPDK's device iterator, else by
/// the device name before the first comma).
pub fn ports_matching(devargs: &str) -> Result<Vec<PortId>> {
    let c = cstring(devargs, "device arguments")?;
    let mut found = Vec::new();
    let mut iter = dpdk_sys::rte_dev_iterator::default();
    // SAFETY: iter is a valid zeroed iterator and c outlives the iteration;
    // cleanup is called whenever init succeeded.
    unsafe {
        if dpdk_sys::rte_eth_iterator_init(&mut iter, c.as_ptr()) == 0 {
            loop {
                let p = dpdk_sys::rte_eth_iterator_next(&mut iter);
                if p >= max_ports() {
                    break;
                }
                found.push(PortId(p));
            }
            dpdk_sys::rte_eth_iterator_cleanup(&mut iter);
        }
    }
    if found.is_empty() {
        let name = devargs.split(',').next().unwrap_or(devargs);
        if let Ok(p) = port_by_name(name) {
            found.push(p);
        }
    }
    Ok(found)
}

/// The port with ethdev name `name`.
pub fn port_by_name(name: &str) -> Result<PortId> {
    let c = cstring(name, "port name")?;
    let mut id = 0u16;
    // SAFETY: c is a valid C string; id is a valid out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    check(|| format!("rte_eth_dev_get_port_by_name({name})"), rc)?;
    Ok(PortId(id))
}

fn dev_info(port: PortId) -> Result<dpdk_sys::rte_eth_dev_info> {
    let mut info = dpdk_sys::rte_eth_dev_info::default();
    // SAFETY: info is a valid out pointer; DPDK validates the port id.
    let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(port.0, &mut info) };
    check(|| format!("rte_eth_dev_info_get(port {port})"), rc)?;
    Ok(info)
}

/// Static facts about `port`.
pub fn info(port: PortId) -> Result<PortInfo> {
    let di = dev_info(port)?;
    let mut name = [0 as std::ffi::c_char; 64];
    // SAFETY: name has room for RTE_ETH_NAME_MAX_LEN (64) bytes.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(port.0, name.as_mut_ptr()) };
    check(|| format!("rte_eth_dev_get_name_by_port({port})"), rc)?;
    // SAFETY: DPDK wrote a NUL-terminated name; driver_name is a static string.
    let (name, driver) = unsafe {
        (
            CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
            if di.driver_name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(di.driver_name).to_string_lossy().into_owned()
            },
        )
    };
    Ok(PortInfo {
        name,
        driver,
        if_index: di.if_index,
        max_rx_queues: di.max_rx_queues,
        max_tx_queues: di.max_tx_queues,
        min_mtu: di.min_mtu,
        max_mtu: di.max_mtu,
    })
}

/// Configures queues, MTU and promiscuous mode, then starts the port.
pub fn configure_and_start(port: PortId, cfg: &PortConfig) -> Result<()> {
    let di = dev_info(port)?;
    if cfg.rx_queues == 0 || cfg.rx_queues > di.max_rx_queues || cfg.tx_queues == 0 || cfg.tx_queues > di.max_tx_queues
    {
        return Err(Error::Invalid(format!(
            "port {port} supports at most {} RX and {} TX queues; {} RX and {} TX were asked for",
            di.max_rx_queues, di.max_tx_queues, cfg.rx_queues, cfg.tx_queues
        )));
    }
    let mut conf = dpdk_sys::rte_eth_conf::default();
    let rss_hf = RSS_WANTED & di.flow_type_rss_offloads;
    if cfg.rx_queues > 1 && rss_hf != 0 {
        conf.rxmode.mq_mode = dpdk_sys::RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
    }
    if cfg.rx_l4_checksum && di.rx_offload_capa & RX_OFFLOAD_UDP_CKSUM != 0 {
        conf.rxmode.offloads |= RX_OFFLOAD_UDP_CKSUM;
    }
    // SAFETY: conf is a valid, fully initialised configuration.
    let rc = unsafe { dpdk_sys::rte_eth_dev_configure(port.0, cfg.rx_queues, cfg.tx_queues, &conf) };
    check(|| format!("rte_eth_dev_configure(port {port}, {} rxq, {} txq)", cfg.rx_queues, cfg.tx_queues), rc)?;
    let (mut nb_rxd, mut nb_txd) = (cfg.rx_desc, cfg.tx_desc);
    // SAFETY: valid out pointers to local values.
    let rc = unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(port.0, &mut nb_rxd, &mut nb_txd) };
    check(|| format!("rte_eth_dev_adjust_nb_rx_tx_desc(port {port})"), rc)?;
    // SAFETY: a plain query.
    let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(port.0) };
    // An unknown NUMA node (-1) is SOCKET_ID_ANY for the queue setup calls.
    let socket = if socket < 0 { dpdk_sys::SOCKET_ID_ANY as u32 } else { socket as u32 };
    for q in 0..cfg.rx_queues {
        // SAFETY: the port is configured with rx_queues queues; NULL rxconf
        // selects the device defaults; the pool outlives the port.
        let rc =
            unsafe { dpdk_sys::rte_eth_rx_queue_setup(port.0, q, nb_rxd, socket, std::ptr::null(), cfg.pool.as_ptr()) };
        check(|| format!("rte_eth_rx_queue_setup(port {port}, queue {q})"), rc)?;
    }
    for q in 0..cfg.tx_queues {
        // SAFETY: as above; NULL txconf selects the device defaults.
        let rc = unsafe { dpdk_sys::rte_eth_tx_queue_setup(port.0, q, nb_txd, socket, std::ptr::null()) };
        check(|| format!("rte_eth_tx_queue_setup(port {port}, queue {q})"), rc)?;
    }
    if let Some(mtu) = cfg.mtu {
        set_mtu(port, mtu)?;
    }
    // SAFETY: all queues are set up.
    let rc = unsafe { dpdk_sys::rte_eth_dev_start(port.0) };
    check(|| format!("rte_eth_dev_start(port {port})"), rc)?;
    if cfg.promiscuous {
        // SAFETY: the port is started.
        let rc = unsafe { dpdk_sys::rte_eth_promiscuous_enable(port.0) };
        // Some virtual devices are always promiscuous and return -ENOTSUP.
        if rc < 0 && -rc != libc::ENOTSUP {
            check(|| format!("rte_eth_promiscuous_enable(port {port})"), rc)?;
        }
    }
    Ok(())
}

/// Stops the port (queues stop; configuration is kept).
pub fn stop(port: PortId) -> Result<()> {
    // SAFETY: DPDK validates the port id; no worker polls it any more (the
    // caller retires it from every worker first).
    let rc = unsafe { dpdk_sys::rte_eth_dev_stop(port.0) };
    check(|| format!("rte_eth_dev_stop(port {port})"), rc).map(|_| ())
}

/// Stops and closes the port and removes its device (the reverse of
/// `probe`). For a `net_tap` device this deletes the kernel interface.
pub fn remove(port: PortId) -> Result<()> {
    let di = dev_info(port)?;
    let _ = stop(port);
    // SAFETY: the port is stopped and no worker uses it.
    let rc = unsafe { dpdk_sys::rte_eth_dev_close(port.0) };
    check(|| format!("rte_eth_dev_close(port {port})"), rc)?;
    if !di.device.is_null() {
        // SAFETY: di.device is the rte_device the port belonged to; its only
        // port is closed, so the bus may now unplug it.
        let rc = unsafe { dpdk_sys::rte_dev_remove(di.device) };
        check(|| format!("rte_dev_remove(port {port})"), rc)?;
    }
    Ok(())
}

/// The port's MAC address.
pub fn mac_addr(port: PortId) -> Result<[u8; 6]> {
    let mut mac = dpdk_sys::rte_ether_addr::default();
    // SAFETY: mac is a valid out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_macaddr_get(port.0, &mut mac) };
    check(|| format!("rte_eth_macaddr_get(port {port})"), rc)?;
    Ok(mac.addr_bytes)
}

/// Sets the port's MAC address (gives an interface back the address it had).
pub fn set_mac(port: PortId, mac: [u8; 6]) -> Result<()> {
    let mut addr = dpdk_sys::rte_ether_addr { addr_bytes: mac };
    // SAFETY: addr is a valid pointer for the duration of the call.
    let rc = unsafe { dpdk_sys::rte_eth_dev_default_mac_addr_set(port.0, &mut addr) };
    check(|| format!("rte_eth_dev_default_mac_addr_set(port {port})"), rc).map(|_| ())
}

/// Brings host interface `name` up, as it was before a device that took it
/// over stopped and set it down (`net_tap` does on an existing tap).
pub fn host_iface_up(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(Error::from_errno(format!("interface name {name:?}"), libc::EINVAL));
    }
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::from_errno(
            "socket for interface flags",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name (zeroed past
    // it); SIOCGIFFLAGS fills ifru_flags, SIOCSIFFLAGS reads it.
    let rc = unsafe {
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        rc
    };
    let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: fd is ours and still open.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(Error::from_errno(format!("setting interface {name} up"), err));
    }
    Ok(())
}

/// Turns promiscuous mode off (gives an interface back as it was found).
pub fn promiscuous_disable(port: PortId) -> Result<()> {
    // SAFETY: plain call on a valid port id.
    let rc = unsafe { dpdk_sys::rte_eth_promiscuous_disable(port.0) };
    if rc < 0 && -rc == libc::ENOTSUP {
        return Ok(());
    }
    check(|| format!("rte_eth_promiscuous_disable(port {port})"), rc).map(|_| ())
}

/// Sets the port's MTU (L3 payload size, Ethernet header excluded).
pub fn set_mtu(port: PortId, mtu: u16) -> Result<()> {
    // SAFETY: plain call; DPDK validates the value against the device limits.
    let rc = unsafe { dpdk_sys::rte_eth_dev_set_mtu(port.0, mtu) };
    check(|| format!("rte_eth_dev_set_mtu(port {port}, {mtu})"), rc).map(|_| ())
}

/// The port's current MTU.
pub fn mtu(port: PortId) -> Result<u16> {
    let mut mtu = 0u16;
    // SAFETY: mtu is a valid out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_mtu(port.0, &mut mtu) };
    check(|| format!("rte_eth_dev_get_mtu(port {port})"), rc)?;
    Ok(mtu)
}

/// Link state without waiting for auto-negotiation.
pub fn link(port: PortId) -> Result<LinkStatus> {
    let mut l = dpdk_sys::rte_eth_link::default();
    // SAFETY: l is a valid out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(port.0, &mut l) };
    check(|| format!("rte_eth_link_get_nowait(port {port})"), rc)?;
    Ok(LinkStatus { up: l.link_status() != 0, speed_mbps: l.link_speed, full_duplex: l.link_duplex() != 0 })
}

/// Device counters.
pub fn stats(port: PortId) -> Result<PortStats> {
    let mut s = dpdk_sys::rte_eth_stats::default();
    // SAFETY: s is a valid out pointer; reading counters is safe concurrently
    // with the data path (the PMD sums per-queue counters).
    let rc = unsafe { dpdk_sys::rte_eth_stats_get(port.0, &mut s) };
    check(|| format!("rte_eth_stats_get(port {port})"), rc)?;
    Ok(PortStats {
        ipackets: s.ipackets,
        opackets: s.opackets,
        ibytes: s.ibytes,
        obytes: s.obytes,
        imissed: s.imissed,
        ierrors: s.ierrors,
        oerrors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    })
}
