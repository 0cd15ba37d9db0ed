//! Results as vwperf prints them with `--json` (and vwbench reads them).

use serde::{Deserialize, Serialize};

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Frames measured.
    pub samples: u64,
    /// Percentiles.
    pub p50_ns: u64,
    /// Percentiles.
    pub p90_ns: u64,
    /// Percentiles.
    pub p99_ns: u64,
    /// Percentiles.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Smallest.
    pub min_ns: u64,
}

/// One traffic run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mode (`pair`, `txonly`, ...).
    pub mode: String,
    /// Frame sizes (`64`, `imix`...).
    pub size: String,
    /// Mean frame size in bytes.
    pub mean_size: f64,
    /// Flows.
    pub flows: u32,
    /// Offered rate in frames/s (0: as fast as possible).
    pub offered_pps: f64,
    /// Seconds measured (after warm-up).
    pub seconds: f64,
    /// Frames sent over the whole run.
    pub tx_frames: u64,
    /// Frames received over the whole run (after a drain).
    pub rx_frames: u64,
    /// Frames the TX queue refused (not sent; not loss).
    pub tx_refused: u64,
    /// Frames sent after the warm-up that never arrived.
    pub lost: u64,
    /// `lost` over the frames sent after the warm-up.
    pub loss_ratio: f64,
    /// Frames that arrived after a later frame of their flow.
    pub reordered: u64,
    /// Frames seen twice.
    pub duplicated: u64,
    /// Frames received that are not vwperf's.
    pub foreign: u64,
    /// Transmit rate over the measured window, frames/s.
    pub tx_pps: f64,
    /// Receive rate over the measured window, frames/s.
    pub rx_pps: f64,
    /// Receive bit rate (frame bytes without FCS x 8), bits/s.
    pub rx_bps: f64,
    /// Latency (latency mode).
    pub latency: Option<Latency>,
}

/// Result of an NDR/PDR search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// Loss threshold (ratio) the rate had to meet.
    pub max_loss_ratio: f64,
    /// Highest rate found with loss at or under the threshold and the
    /// offered load taken by the device (measured), frames/s per sending port.
    pub rate_pps: f64,
    /// Each trial: offered rate per sending port (the first: measured at
    /// maximum), loss ratio.
    pub trials: Vec<(f64, f64)>,
    /// The run at the rate found.
    pub at_rate: Summary,
}
