//! What a wire can carry, and when an endpoint's MTU does not fit it.
//!
//! A guest whose MTU is larger than its wire carries sees pings pass and TCP
//! stall: the fabric drops its large frames (`encap_too_big`) and nothing
//! tells the guest. These functions name the mismatch so the fabric can
//! say it once in its log and in `vwctl status`.

use vw_wire::Encap;

/// The largest MTU (IP packet size, the figure a guest is configured with)
/// an encap wire in `encap` carries over an underlay of `underlay_mtu`.
pub fn encap_carries(encap: Encap, underlay_mtu: u16) -> u16 {
    let frame = vw_wire::encap::max_inner_len_for(encap, underlay_mtu);
    frame.saturating_sub(vw_wire::ethernet::HEADER_LEN).min(usize::from(u16::MAX)) as u16
}

/// What is wrong with endpoint `name`, at MTU `mtu` (0: not known), on a
/// wire that carries at most `carries` (`None`: a loopback wire, which
/// carries whatever the far end takes), whose far end is local endpoint
/// `peer` at `peer_mtu` for a loopback wire. `None` when nothing is.
pub fn mismatch(name: &str, mtu: u16, carries: Option<u16>, peer: Option<(&str, u16)>) -> Option<String> {
    match (carries, peer) {
        (Some(max), _) if mtu > max => Some(format!(
            "endpoint {name} has MTU {mtu} but its wire carries at most {max}: larger frames are dropped \
             (encap_too_big); give the VM MTU {max} (QEMU host_mtu={max}, libvirt <mtu size='{max}'/>) or raise \
             the underlay MTU"
        )),
        (Some(max), _) if mtu == 0 && max < 1500 => Some(format!(
            "endpoint {name} did not say its MTU (no host_mtu) and its wire carries at most {max}: a VM at the \
             default 1500 has its larger frames dropped (encap_too_big); give it MTU {max} (QEMU host_mtu={max})"
        )),
        (None, Some((p, pm))) if mtu != 0 && pm != 0 && mtu != pm => {
            let (small, small_mtu, big, big_mtu) = if mtu < pm { (name, mtu, p, pm) } else { (p, pm, name, mtu) };
            Some(format!(
                "the ends of a loopback wire have different MTUs ({big} {big_mtu}, {small} {small_mtu}): frames \
                 from {big} larger than {small_mtu} are dropped by {small}"
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encap_wire_carries_the_underlay_mtu_less_the_encapsulation() {
        assert_eq!(encap_carries(Encap::Vwire, 1500), 1454);
        assert_eq!(encap_carries(Encap::Vxlan, 1500), 1450);
        assert_eq!(encap_carries(Encap::Vwire, 9000), 8954);
        assert_eq!(encap_carries(Encap::Vxlan, 20), 0);
        // ESP's header, the datagram's UDP header and the longest trailer.
        assert_eq!(encap_carries(Encap::Secure, 1500), 1412);
        assert_eq!(encap_carries(Encap::SecureVxlan, 1500), 1408);
    }

    #[test]
    fn mismatches_are_named_and_fits_are_not() {
        assert_eq!(mismatch("vm1", 1454, Some(1454), None), None);
        assert_eq!(mismatch("vm1", 1400, Some(1454), None), None);
        let m = mismatch("vm1", 1500, Some(1454), None).unwrap();
        assert!(m.contains("MTU 1500") && m.contains("at most 1454") && m.contains("host_mtu=1454"), "{m}");
        let m = mismatch("vm1", 0, Some(1450), None).unwrap();
        assert!(m.contains("did not say its MTU") && m.contains("host_mtu=1450"), "{m}");
        // Unknown MTU over a jumbo underlay: the default fits.
        assert_eq!(mismatch("vm1", 0, Some(8954), None), None);
        // Loopback: only two known, different MTUs are a mismatch.
        assert_eq!(mismatch("a", 1500, None, Some(("b", 1500))), None);
        assert_eq!(mismatch("a", 0, None, Some(("b", 9000))), None);
        let m = mismatch("a", 1500, None, Some(("b", 9000))).unwrap();
        assert!(m.contains("b 9000, a 1500") && m.contains("larger than 1500 are dropped by a"), "{m}");
    }
}
