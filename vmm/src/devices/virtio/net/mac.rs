//! The guest's MAC address: parsed from the API's `aa:bb:cc:dd:ee:ff`, or
//! generated.

use std::fmt;
use std::io;

pub const MAC_LEN: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr([u8; MAC_LEN]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("guest_mac {0:?} is not a MAC address of the form aa:bb:cc:dd:ee:ff")]
    Syntax(String),
    #[error("guest_mac {0:?} is a multicast address; a NIC needs a unicast one (first byte even)")]
    Multicast(String),
    #[error("guest_mac {0:?} is all zeroes")]
    Zero(String),
}

impl MacAddr {
    pub fn bytes(&self) -> [u8; MAC_LEN] {
        self.0
    }

    /// Six two-digit hexadecimal bytes separated by colons. A multicast or
    /// all-zero address is refused: Linux ignores such a MAC and makes up
    /// its own, so the configuration would silently not apply.
    pub fn parse(text: &str) -> Result<Self, MacError> {
        let parsed: husk_api::devices::MacAddr = text.parse().map_err(|_| MacError::Syntax(text.to_string()))?;
        let bytes = parsed.0;
        if bytes[0] & 0x01 != 0 {
            return Err(MacError::Multicast(text.to_string()));
        }
        if bytes == [0; MAC_LEN] {
            return Err(MacError::Zero(text.to_string()));
        }
        Ok(Self(bytes))
    }

    /// A random unicast, locally administered address (first byte x2, x6,
    /// xa or xe), as Firecracker and Linux make up.
    pub fn random() -> io::Result<Self> {
        let mut bytes = [0u8; MAC_LEN];
        // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got as usize != bytes.len() {
            // Requests up to 256 bytes are never cut short; be safe anyway.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "getrandom returned too few bytes"));
        }
        bytes[0] = (bytes[0] & !0x01) | 0x02;
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac = MacAddr::parse("06:00:AC:10:00:02").unwrap();
        assert_eq!(mac.bytes(), [0x06, 0x00, 0xac, 0x10, 0x00, 0x02]);
        assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
    }

    #[test]
    fn refuses_malformed_multicast_and_zero_addresses() {
        for bad in
            ["", "06:00:ac:10:00", "06:00:ac:10:00:02:03", "06:00:ac:10:00:2", "06-00-ac-10-00-02", "06:00:ac:10:00:0g"]
        {
            assert_eq!(MacAddr::parse(bad), Err(MacError::Syntax(bad.to_string())), "{bad:?}");
        }
        assert!(matches!(MacAddr::parse(" 6:00:ac:10:00:02"), Err(MacError::Syntax(_))));
        assert!(matches!(MacAddr::parse("+6:00:ac:10:00:02"), Err(MacError::Syntax(_))));
        assert!(matches!(MacAddr::parse("01:00:5e:00:00:01"), Err(MacError::Multicast(_))));
        assert!(matches!(MacAddr::parse("00:00:00:00:00:00"), Err(MacError::Zero(_))));
    }

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let a = MacAddr::random().unwrap();
        let b = MacAddr::random().unwrap();
        for mac in [a, b] {
            assert_eq!(mac.bytes()[0] & 0x03, 0x02, "{mac}");
        }
        assert_ne!(a, b);
    }
}
