//! The control protocol: request lines as the socket server decodes them (one JSON object per
//! line, `serde_json::from_slice::<Request>`), and reply lines as `vwctl` decodes them
//! (`Reply`, then its result as `Status`, `Stats`, endpoints or wires).
//!
//! The input is split into lines at `\n` as the server does; blank lines are skipped.
//!
//! Invariants: decoding bytes and decoding the same text agree; a request that decodes
//! re-encodes to one line that decodes to the same request, and re-encoding that gives the same
//! line; every decoded request names its command in `cmd`; a reply that decodes re-encodes to
//! one line that decodes to the same status, error and (floats aside) result; a result that
//! decodes as one of the result types survives encode and decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vw_ctl::proto::{EndpointInfo, Stats, Status, WireInfo};
use vw_ctl::{Reply, Request};

#[path = "leak_check.rs"]
mod leak_check;

fuzz_target!(|data: &[u8]| {
    leak_check::without_leaks(|| one_input(data));
});

fn one_input(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        request_line(line);
        reply_line(line);
    }
}

fn request_line(line: &[u8]) {
    let decoded = serde_json::from_slice::<Request>(line);
    match std::str::from_utf8(line) {
        Ok(text) => assert_eq!(decoded.as_ref().ok(), serde_json::from_str::<Request>(text).as_ref().ok()),
        Err(_) => assert!(decoded.is_err(), "a request with invalid UTF-8 was accepted"),
    }
    let Ok(request) = decoded else {
        return;
    };
    let encoded = serde_json::to_string(&request).expect("a request encodes");
    assert!(!encoded.contains('\n'), "an encoded request spans lines: {encoded}");
    let again: Request = serde_json::from_str(&encoded).unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
    assert_eq!(again, request);
    assert_eq!(serde_json::to_string(&again).expect("a request encodes"), encoded);
    let value = serde_json::to_value(&request).expect("a request encodes");
    assert!(value["cmd"].is_string(), "{encoded} has no cmd");
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

/// Decodes `value` as `$t`; if it does, encode then decode gives it back.
macro_rules! typed_round_trip {
    ($value:expr, $($t:ty),+) => {$(
        if let Ok(x) = serde_json::from_value::<$t>($value.clone()) {
            let s = serde_json::to_string(&x).expect("a result encodes");
            let y: $t = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s} does not decode: {e}"));
            assert_eq!(x, y, "{} does not survive a round trip", stringify!($t));
        }
    )+};
}

fn reply_line(line: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<Reply>(line) else {
        return;
    };
    let encoded = serde_json::to_string(&reply).expect("a reply encodes");
    assert!(!encoded.contains('\n'), "an encoded reply spans lines: {encoded}");
    let again: Reply = serde_json::from_str(&encoded).unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
    assert_eq!((again.ok, &again.error), (reply.ok, &reply.error));
    if let Some(result) = &reply.result {
        if !has_float(result) {
            assert_eq!(again.result.as_ref(), Some(result));
        }
        typed_round_trip!(result, Status, Stats, EndpointInfo, Vec<EndpointInfo>, WireInfo, Vec<WireInfo>);
    }
}
