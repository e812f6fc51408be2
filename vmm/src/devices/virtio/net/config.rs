//! What the caller asks for: one tap, the guest's MAC and MTU. Parsed from
//! the `--net fd=N,mac=02:00:00:00:00:01[,mtu=1500]` syntax of the CLI.

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;

/// One virtio-net device on a tap (see [`crate::devices::virtio::net`] for
/// what the tap must be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// A tap file descriptor, borrowed: the device duplicates it, so the
    /// caller's copy stays the caller's (it shares the file description,
    /// and so the O_NONBLOCK flag the device sets).
    pub tap_fd: RawFd,
    /// The guest's MAC address: unicast, not all zeros.
    pub mac: [u8; 6],
    /// The MTU the guest is told to use, 68 or more.
    pub mtu: u16,
}

impl NetConfig {
    pub const DEFAULT_MTU: u16 = 1500;
}

/// `aa:bb:cc:dd:ee:ff`, the way `ip link` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut octets = text.split(':');
        for byte in &mut mac {
            let octet = octets.next().ok_or_else(|| "not six octets".to_string())?;
            // from_str_radix alone would take a sign ("+1").
            if octet.len() != 2 || !octet.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("`{octet}` is not two hex digits"));
            }
            *byte = u8::from_str_radix(octet, 16).expect("two hex digits");
        }
        if octets.next().is_some() {
            return Err("not six octets".into());
        }
        Ok(Self(mac))
    }
}

/// What is wrong with a `--net` value, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetSpecError {
    #[error("unknown key `{0}` (fd, mac and mtu are known)")]
    UnknownKey(String),
    #[error("`{0}` is not key=value")]
    NotKeyValue(String),
    #[error("{0}= is given twice")]
    Repeated(&'static str),
    #[error("{0}= is required")]
    Missing(&'static str),
    #[error("{key}={value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl FromStr for NetConfig {
    type Err = NetSpecError;

    /// `fd=N,mac=02:00:00:00:00:01[,mtu=1500]`. Only the syntax is checked
    /// here; [`super::Net::new`] checks the values.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut fd, mut mac, mut mtu) = (None, None, None);
        for item in spec.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| NetSpecError::NotKeyValue(item.to_string()))?;
            let invalid = |key, reason: String| NetSpecError::Invalid {
                key,
                value: value.to_string(),
                reason,
            };
            match key {
                "fd" => {
                    let parsed = value
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd >= 0)
                        .ok_or_else(|| invalid("fd", "not a file descriptor number".into()))?;
                    set(&mut fd, "fd", parsed)?;
                }
                "mac" => {
                    let parsed = value
                        .parse::<Mac>()
                        .map_err(|reason| invalid("mac", reason))?;
                    set(&mut mac, "mac", parsed.0)?;
                }
                "mtu" => {
                    let parsed = value
                        .parse::<u16>()
                        .map_err(|_| invalid("mtu", "not a number from 0 to 65535".into()))?;
                    set(&mut mtu, "mtu", parsed)?;
                }
                other => return Err(NetSpecError::UnknownKey(other.to_string())),
            }
        }
        Ok(Self {
            tap_fd: fd.ok_or(NetSpecError::Missing("fd"))?,
            mac: mac.ok_or(NetSpecError::Missing("mac"))?,
            mtu: mtu.unwrap_or(Self::DEFAULT_MTU),
        })
    }
}

fn set<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), NetSpecError> {
    if slot.replace(value).is_some() {
        return Err(NetSpecError::Repeated(key));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_syntax() {
        let config: NetConfig = "fd=7,mac=02:00:0A:00:00:fe".parse().expect("parse");
        assert_eq!(
            config,
            NetConfig {
                tap_fd: 7,
                mac: [2, 0, 0x0a, 0, 0, 0xfe],
                mtu: 1500
            }
        );
        let config: NetConfig = "mtu=9000,mac=02:00:00:00:00:01,fd=3"
            .parse()
            .expect("parse");
        assert_eq!((config.tap_fd, config.mtu), (3, 9000));
        assert_eq!(Mac(config.mac).to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = |spec: &str| spec.parse::<NetConfig>().expect_err(spec).to_string();
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:01,speed=10"),
            "unknown key `speed` (fd, mac and mtu are known)"
        );
        assert_eq!(err("fd=3"), "mac= is required");
        assert_eq!(err("mac=02:00:00:00:00:01"), "fd= is required");
        assert_eq!(err("fd=3,fd=4,mac=02:00:00:00:00:01"), "fd= is given twice");
        assert_eq!(
            err("fd=-1,mac=02:00:00:00:00:01"),
            "fd=-1: not a file descriptor number"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00"),
            "mac=02:00:00:00:00: not six octets"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:01:02"),
            "mac=02:00:00:00:00:01:02: not six octets"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:1"),
            "mac=02:00:00:00:00:1: `1` is not two hex digits"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:0g"),
            "mac=02:00:00:00:00:0g: `0g` is not two hex digits"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:01,mtu=70000"),
            "mtu=70000: not a number from 0 to 65535"
        );
        assert_eq!(
            err("fd=3,mac=02:00:00:00:00:+1"),
            "mac=02:00:00:00:00:+1: `+1` is not two hex digits"
        );
        assert_eq!(err("fd=3,mac"), "`mac` is not key=value");
        assert_eq!(err(""), "`` is not key=value");
    }
}
