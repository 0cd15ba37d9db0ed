//! `vw-perf`: traffic for measuring VirtualWire.
//!
//! * `vwperf` (`src/bin/vwperf.rs`) attaches as the VM side to fabric
//!   endpoints (virtio_user on a vhost-user socket) or to any DPDK device,
//!   and generates, sinks, forwards or times traffic, testpmd style.
//! * `vwbench` (`src/bin/vwbench.rs`) runs the benchmark: the fabric and
//!   `dpdk-testpmd` baselines on the same topologies, interleaved, medians,
//!   the table in `docs/perf.md`.
//!
//! This library holds what both share and what can be tested without DPDK:
//! the test frame format and the result types.
#![forbid(unsafe_code)]

pub mod frame;
pub mod report;
