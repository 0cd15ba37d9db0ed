//! The secure wire's format: ESP (RFC 4303) in UDP (RFC 3948, port 4500)
//! with AES-GCM (RFC 4106, 128- or 256-bit keys), in transport mode: the
//! protected payload is the tunnel datagram (a UDP header and a vwire or
//! VXLAN packet); the outer IPv4 header stays in front.
//!
//! ```text
//! IPv4 | UDP 4500 -> 4500 | SPI | seq (low 32) | IV (8) | UDP | tunnel | frame | pad | pad len | next hdr | ICV (16)
//!                          \------ ESP header, 16 ------/ \------------ encrypted ----------------------/
//! ```
//!
//! * [`Outbound`] seals a payload in place: the caller leaves
//!   [`HEADER_LEN`] bytes in front of it and [`MAX_TRAILER_LEN`] behind
//!   it; no allocation, no copy of the payload.
//! * [`Inbound`] opens in place: the replay check first (cheap), then the
//!   ICV (nothing is returned before it is verified), then the window
//!   moves. Sequence numbers are 64-bit (ESN, RFC 4303 §2.2.1 and
//!   Appendix A); only their low 32 bits are on the wire, the high ones
//!   are inferred from the window.
//! * [`ReplayWindow`] is the RFC 4303 §3.4.3 sliding window, of
//!   [`WINDOW`] packets.
//!
//! Each SA is owned by one worker: `&mut self`, no lock, no atomic.
//! The cryptography is ring's (assembly AES-GCM); nothing here is
//! hand-written cryptography. Key material is never printed: the key
//! types' `Debug` shows only the SPI and the key length.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod replay;
mod sa;

pub use replay::{Refusal, ReplayWindow, SharedWindow, Window, WINDOW};
pub use sa::{
    classify, Datagram, Inbound, KeyError, Keymat, OpenError, OpenKey, Opened, Outbound, SealError, SealKey,
    SharedOutbound, HEADER_LEN, ICV_LEN, MAX_TRAILER_LEN, NAT_KEEPALIVE, PORT,
};
