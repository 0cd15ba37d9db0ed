//! `vw-ctl`: the VirtualWire control protocol.
//!
//! * [`proto`]: every request and reply, as serde types. One JSON object per
//!   line in each direction; `docs/control.md` documents them.
//! * [`server`]: the Unix-socket listener the fabric runs. It frames and
//!   decodes requests, bounds their size and the time a client may take, and
//!   hands each valid request to the fabric's control thread over a channel.
//!   It owns no fabric state and makes no DPDK call.
//! * [`client`]: a blocking client, used by `vwctl` and the tests.
//! * [`keyfile`]: a secure wire's key file, as `vwctl keygen` writes it and
//!   `vwctl connect --key-file` reads it.
#![forbid(unsafe_code)]

pub mod client;
pub mod keyfile;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError};
pub use proto::{ErrorCode, Reply, Request};

/// Where `vwfabric` listens and `vwctl` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vwfabric.sock";
