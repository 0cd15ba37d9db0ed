//! The VirtualWire control-plane core.
//!
//! Pure: no DPDK, no I/O, no clock of its own (callers pass the time). The
//! fabric's control thread is a shell around it: it opens devices, takes
//! requests, VM events and migration messages, changes a copy of the
//! [`State`] through its methods, brings the data-path [`Plan`] up to date
//! with [`compile::update`] and publishes it with each port's device
//! handles.
//!
//! * [`state`]: the configuration, with persistent maps (a copy is O(1))
//!   and the marks of what each change touched;
//! * [`compile`]: state to plan, incrementally;
//! * [`rxq`]: which worker polls which receive queue, balanced by load;
//! * [`exchange`]: the live-migration exchange, message in, next state and
//!   messages out;
//! * [`hold`]: frames held in order while a wire end moves;
//! * [`policy`]: who may do what through the control socket;
//! * [`neighbour`], [`migrate`]: next-hop resolution and what is known of
//!   moving wire ends.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compile;
pub mod exchange;
pub mod hold;
pub mod migrate;
pub mod mtu;
pub mod neighbour;
pub mod plan;
pub mod policy;
pub mod rxq;
pub mod state;

pub use plan::{decap_key, DecapTarget, EndpointAction, Plan, PortDecision, PortIndex, Role, UplinkPlan};
pub use state::{Config, Endpoint, EndpointKind, Link, MigrationConfig, State, UplinkConfig};
