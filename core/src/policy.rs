//! Who may do what through the control socket.
//!
//! Root (and the fabric's own user) may do everything. Other clients, the
//! members of `--socket-group`, manage wires and endpoints but reach no
//! file, socket or interface through the fabric: they add vhost-user
//! endpoints by name (the socket is created in the fabric's `--vhost-dir`)
//! and DPDK devices only when the device arguments match a pattern root
//! gave at start (`--allow-device`).

/// A pattern of device arguments root allows for other clients:
/// `DRIVER[,KEY=VALUE]...`, where DRIVER and each VALUE may hold `*` (any
/// run of characters but `,`) and `?` (any one). Device arguments match
/// when their driver matches DRIVER and every `key=value` they have
/// matches the pattern's entry for that key: a key the pattern does not
/// name is refused (`net_tap*,iface=vm*` allows `net_tap3,iface=vm7` but
/// not `net_tap3,iface=vm7,remote=eth0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePattern {
    driver: String,
    args: Vec<(String, String)>,
    text: String,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadPattern {}

impl std::str::FromStr for DevicePattern {
    type Err = BadPattern;

    fn from_str(s: &str) -> Result<DevicePattern, BadPattern> {
        let mut parts = s.split(',');
        let driver = parts.next().unwrap_or("").trim().to_owned();
        if driver.is_empty() || driver.contains('=') {
            return Err(BadPattern(format!(
                "{s:?}: a device pattern starts with a driver name (`net_tap*,iface=vm*`)"
            )));
        }
        let mut args = Vec::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                return Err(BadPattern(format!("{s:?}: {p:?} is not KEY=VALUE")));
            };
            if k.is_empty() || k.contains(['*', '?']) {
                return Err(BadPattern(format!("{s:?}: {k:?} must be a plain argument name")));
            }
            if args.iter().any(|(a, _): &(String, String)| a == k) {
                return Err(BadPattern(format!("{s:?}: {k} is given twice")));
            }
            args.push((k.to_owned(), v.to_owned()));
        }
        Ok(DevicePattern { driver, args, text: s.to_owned() })
    }
}

impl std::fmt::Display for DevicePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `*` matches any run of characters, `?` any one; nothing else is special.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], s) || (!s.is_empty() && glob(pattern, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

impl DevicePattern {
    /// Whether `devargs` match.
    pub fn matches(&self, devargs: &str) -> bool {
        let mut parts = devargs.split(',');
        let driver = parts.next().unwrap_or("").trim();
        if !glob(self.driver.as_bytes(), driver.as_bytes()) {
            return false;
        }
        let mut seen: Vec<&str> = Vec::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=') else { return false };
            // A key given twice could mean either value to the driver.
            if seen.contains(&k) {
                return false;
            }
            seen.push(k);
            match self.args.iter().find(|(a, _)| a == k) {
                Some((_, pv)) if glob(pv.as_bytes(), v.as_bytes()) => {}
                _ => return false,
            }
        }
        true
    }
}

/// What the fabric lets a client do, by who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Root or the fabric's own user: everything.
    Operator,
    /// Any other client the socket's permissions let in (the socket group):
    /// wires, endpoints by name, allowed devices.
    Member,
}

impl Role {
    /// The role of a client with user id `uid` of a fabric running as `own_uid`.
    pub fn of(uid: u32, own_uid: u32) -> Role {
        if uid == 0 || uid == own_uid {
            Role::Operator
        } else {
            Role::Member
        }
    }
}

/// The longest device name (before the first comma) DPDK takes:
/// `RTE_DEV_NAME_MAX_LEN` is 64 with the terminating NUL.
pub const MAX_DEVICE_NAME: usize = 63;

/// Checks the form of device arguments before anything is asked of DPDK,
/// for every client: `DRIVER[,KEY=VALUE]...`, where the device name is
/// 1-63 of `A-Z a-z 0-9 _ . : -` (a vdev name such as `net_tap3` or a PCI
/// address), no control characters or surrounding blanks anywhere, and
/// not DPDK's layered `bus=/class=/driver=` syntax (some of its forms crash
/// DPDK's device iterator). A member's arguments, which an allow-list
/// pattern with wildcards may pass, are further limited to
/// `A-Z a-z 0-9 _ . : , = + -`: no paths, spaces, brackets or quotes.
pub fn check_devargs(devargs: &str, role: Role) -> Result<(), String> {
    if devargs.is_empty() {
        return Err("device arguments are empty".into());
    }
    if let Some(c) = devargs.chars().find(|c| c.is_control()) {
        return Err(format!("device arguments may not contain control characters ({:?} found)", c));
    }
    if devargs.trim() != devargs {
        return Err("device arguments may not start or end with blanks".into());
    }
    let name = devargs.split(',').next().unwrap_or_default();
    if name.is_empty() || name.len() > MAX_DEVICE_NAME {
        return Err(format!(
            "the device name {name:?} must be 1-{MAX_DEVICE_NAME} characters (DPDK's RTE_DEV_NAME_MAX_LEN)"
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
        return Err(format!(
            "the device name {name:?} may hold only A-Z a-z 0-9 _ . : - ({c:?} found); give DRIVER[,KEY=VALUE]..."
        ));
    }
    for layer in ["bus=", "class=", "driver="] {
        if devargs.contains(&format!("/{layer}")) {
            return Err(format!(
                "DPDK's layered device syntax (`/{layer}...`) is not accepted; give DRIVER[,KEY=VALUE]..."
            ));
        }
    }
    if role == Role::Member {
        if let Some(c) = devargs
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | ',' | '=' | '+' | '-')))
        {
            return Err(format!(
                "device arguments from the socket group may hold only A-Z a-z 0-9 _ . : , = + - ({c:?} found)"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is usable as a file name in the vhost-user directory
/// (endpoint names are checked by the wire table; this is belt and braces).
pub fn socket_name_ok(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments_of_the_wrong_form_are_refused_before_dpdk_sees_them() {
        use Role::{Member, Operator};
        for ok in ["net_null0", "net_tap3,iface=vm7", "0000:03:00.0", "net_pcap0,rx_pcap=/tmp/a b.pcap"] {
            assert_eq!(check_devargs(ok, Operator), Ok(()), "{ok}");
        }
        assert!(check_devargs("net_null0,size=64", Member).is_ok());
        let refused = |d: &str, r: Role, why: &str| {
            let e = check_devargs(d, r).unwrap_err();
            assert!(e.contains(why), "{d:?}: {e}");
        };
        // The forms that crash DPDK's iterator, from anyone.
        refused("net_null1=x/class=eth", Operator, "may hold only");
        refused("net_null2,size=64/class=eth", Operator, "layered");
        refused("net_null2,a=b/bus=vdev", Member, "layered");
        refused("", Operator, "empty");
        refused(" net_null6", Operator, "blanks");
        refused("net_null0\u{1b}[2J", Operator, "control characters");
        refused("net_null21\n", Member, "control characters");
        refused(&format!("net_{}", "x".repeat(80)), Operator, "1-63 characters");
        refused("net_null0,rx_pcap=/etc/shadow", Member, "socket group may hold only");
        refused("net_null0,size=[1,copy=1]", Member, "socket group may hold only");
    }

    #[test]
    fn patterns_allow_exactly_what_they_name() {
        let p: DevicePattern = "net_tap*,iface=vm*".parse().unwrap();
        assert!(p.matches("net_tap3,iface=vm7"));
        assert!(p.matches("net_tap3"));
        assert!(!p.matches("net_tap3,iface=eth0"));
        assert!(!p.matches("net_tap3,iface=vm7,remote=eth0"), "a key the pattern does not name");
        assert!(!p.matches("net_tap3,iface=vm7,iface=eth0"), "a key given twice");
        assert!(!p.matches("net_pcap0,iface=vm1"));
        assert!(!p.matches("net_tap3,iface"), "not key=value");
        let p: DevicePattern = "net_null?".parse().unwrap();
        assert!(p.matches("net_null1"));
        assert!(!p.matches("net_null12"));
        assert!(!p.matches("net_null1,size=64"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["", "iface=vm1", "net_tap*,iface", "net_tap*,*=x", "net_tap*,a=1,a=2"] {
            assert!(bad.parse::<DevicePattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_and_the_fabric_user_operate_others_are_members() {
        assert_eq!(Role::of(0, 0), Role::Operator);
        assert_eq!(Role::of(1000, 1000), Role::Operator);
        assert_eq!(Role::of(1000, 0), Role::Member);
        assert!(socket_name_ok("vm1") && !socket_name_ok("..") && !socket_name_ok("a/b"));
    }
}
