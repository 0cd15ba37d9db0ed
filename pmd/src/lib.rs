//! `vw-pmd`: the only crate in VirtualWire that calls DPDK.
//!
//! It owns every `unsafe` block of the project. Everything above it (`fabric/`,
//! `ctl/`, `perf/`) is safe Rust that sees typed errors ([`Error`]), owning
//! mbuf handles ([`Mbuf`]) and fixed-size bursts ([`Burst`], [`TxBuffer`]).
//!
//! Rules kept here:
//! * every `unsafe` block carries a `// SAFETY:` argument;
//! * DPDK's static-inline functions are real calls through the generated
//!   wrappers, so they are used once per burst; per-packet mbuf arithmetic
//!   (data offset, lengths, prepend, adj) is done in Rust on the `rte_mbuf`
//!   fields and inlines into the data path;
//! * return codes become [`Error`] values carrying `rte_errno` and its text.

pub mod eal;
pub mod error;
pub mod mbuf;
pub mod mempool;
pub mod port;
pub mod time;
pub mod vhost;

pub use eal::{Eal, LcoreId};
pub use error::{Error, Result};
pub use mbuf::{Burst, FreeBatch, Mbuf, PortIo, TxBuffer, BURST_SIZE};
pub use mempool::Mempool;
pub use port::{LinkStatus, PortConfig, PortId, PortInfo, PortStats, Probed};
pub use vhost::{VhostPort, VhostSocket, VhostState};
