//! Device configuration bodies: `PUT /vsock`, `PUT /network-interfaces/{id}`
//! (Firecracker's), and `PUT /fs/{id}` (husk's extension).
//!
//! As for the machine configuration, parsing checks only a body's shape; the
//! `validate` methods (and [`validate_id`], [`validate_host_dev_name`],
//! [`MacAddr`]) decide whether the values make sense. The VMM calls them for
//! the API and the config file alike, and the device models rely on what
//! they guarantee.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest resource id (`iface_id`, `fs_id`, and the id in an API path)
/// husk accepts. Firecracker sets no bound; ids name devices in logs and
/// error messages, where a kilobyte-long id is only noise.
pub const MAX_ID_LEN: usize = 64;

/// Why a resource id is refused. The texts of the first two are
/// Firecracker's, which refuses the same ids in API paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    Empty,
    InvalidCharacter,
    TooLong,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("The ID cannot be empty."),
            Self::InvalidCharacter => {
                f.write_str("API Resource IDs can only contain alphanumeric characters and underscores.")
            }
            Self::TooLong => write!(f, "API Resource IDs can be at most {MAX_ID_LEN} bytes long."),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks a resource id: non-empty, ASCII alphanumeric characters and `_`
/// only, at most [`MAX_ID_LEN`] bytes. Firecracker's rule allows any Unicode
/// alphanumeric; ASCII keeps an id one byte per character, so the spec's
/// `pattern` and `maxLength` say exactly what is accepted, and ids stay plain
/// in logs, metrics keys and paths.
///
/// The same rule applies to the ids in bodies and in the config file, so any
/// device husk holds can be named in a path (`PUT /fs/{fs_id}` to replace it).
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if !id.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric()) {
        return Err(IdError::InvalidCharacter);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    Ok(())
}

/// The size of a Linux network interface name, its NUL included: a TAP
/// device's name has at most `IFNAMSIZ - 1` bytes.
pub const IFNAMSIZ: usize = 16;

/// Checks `host_dev_name` as the kernel checks an interface name
/// (`dev_valid_name`): 1 to 15 bytes, not `.` or `..`, without `/`, `:`,
/// whitespace or NUL. Opening a TAP by a name the kernel refuses fails only
/// at boot, with a bare EINVAL; refusing it here names the problem.
pub fn validate_host_dev_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(format!("host_dev_name must be 1 to {} bytes, got {name:?}", IFNAMSIZ - 1));
    }
    if name == "." || name == ".." {
        return Err(format!("host_dev_name {name:?} is not a valid interface name"));
    }
    if let Some(bad) = name.chars().find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        return Err(format!("host_dev_name {name:?} is not a valid interface name: it contains {bad:?}"));
    }
    Ok(())
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`: six bytes of two hexadecimal
/// digits each, in either case, as Firecracker parses `guest_mac`. It
/// displays in lower case, as Firecracker writes it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is an individual (unicast) address: the I/G bit, the
    /// lowest bit of the first byte, is clear. A group address is a
    /// destination only, never an interface's own address.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not a MAC address (see [`MacAddr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacAddrError(pub String);

impl fmt::Display for MacAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a MAC address: expected six two-digit hexadecimal bytes separated by colons, \
             such as 06:00:ac:10:00:02",
            self.0
        )
    }
}

impl std::error::Error for MacAddrError {}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || MacAddrError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(error)?;
            // Exactly two hex digits: from_str_radix alone would also take
            // "+a" or a single digit.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(Self(bytes))
    }
}

/// The lowest CID a guest may have: 0-2 are reserved (hypervisor, local,
/// host).
pub const MIN_GUEST_CID: u64 = 3;

/// `PUT /vsock`: a virtio-vsock device in Firecracker's hybrid design. A
/// guest connection to host port P is forwarded to the Unix socket
/// `<uds_path>_P`; a host process connects to `<uds_path>` and sends
/// `CONNECT <port>\n` to reach guest port `<port>`, answered `OK <host_port>\n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u64,
    pub uds_path: String,
}

impl VsockConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid > u64::from(u32::MAX) {
            return Err(format!("guest_cid must be between {MIN_GUEST_CID} and {}, got {}", u32::MAX, self.guest_cid));
        }
        if self.uds_path.is_empty() {
            return Err("uds_path must not be empty".into());
        }
        // The device binds `uds_path` (and connects to `<uds_path>_<port>`):
        // a path that does not fit a socket address would fail only at boot.
        if self.uds_path.len() >= UNIX_PATH_MAX {
            return Err(format!(
                "uds_path must be shorter than {UNIX_PATH_MAX} bytes (the size of a Unix socket address), \
                 got {} bytes",
                self.uds_path.len()
            ));
        }
        if self.uds_path.contains('\0') {
            return Err("uds_path must not contain a NUL byte".into());
        }
        Ok(())
    }
}

/// The size of `sun_path` in a Unix socket address, its NUL included.
pub const UNIX_PATH_MAX: usize = 108;

/// A token bucket of Firecracker's rate limiter: `size` tokens (bytes or
/// operations), refilled completely every `refill_time` ms, plus an initial
/// `one_time_burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// Firecracker's `RateLimiter`: a bandwidth (bytes) and/or an operations
/// (packets) bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl TokenBucket {
    /// A bucket with `size` 0 limits nothing (Firecracker's convention, kept
    /// so that its configurations mean the same here). A bucket with a size
    /// but no `refill_time` would be read the same way by Firecracker, which
    /// silently drops the limit the caller asked for: husk refuses it, and a
    /// burst on a bucket that limits nothing, which would be ignored too.
    pub fn validate(&self) -> Result<(), String> {
        if self.size > 0 && self.refill_time == 0 {
            return Err(format!("refill_time must be at least 1 ms when size is not 0 (size is {})", self.size));
        }
        if self.size == 0 && self.one_time_burst.is_some_and(|burst| burst > 0) {
            return Err("one_time_burst needs a size: a bucket of size 0 limits nothing".into());
        }
        Ok(())
    }
}

impl RateLimiterConfig {
    /// Checks both buckets; the error names the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(bucket) = bucket {
                bucket.validate().map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device backed by an
/// existing TAP device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`; a random locally administered one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceConfig {
    /// Checks what the device needs of the configuration: a valid interface
    /// name, a unicast `guest_mac` and sane rate limiters. Whether the TAP
    /// exists is only known when the device opens it, at boot. The id is
    /// checked by [`validate_id`], as every device's.
    pub fn validate(&self) -> Result<(), String> {
        validate_host_dev_name(&self.host_dev_name)?;
        self.guest_mac_addr()?;
        for (name, limiter) in [("rx_rate_limiter", &self.rx_rate_limiter), ("tx_rate_limiter", &self.tx_rate_limiter)]
        {
            if let Some(limiter) = limiter {
                limiter.validate().map_err(|e| format!("{name}.{e}"))?;
            }
        }
        Ok(())
    }

    /// `guest_mac` parsed, if set. Refuses what is not a MAC address, a
    /// group (multicast or broadcast) address and the all-zero address,
    /// none of which an interface can have as its own.
    pub fn guest_mac_addr(&self) -> Result<Option<MacAddr>, String> {
        let Some(text) = &self.guest_mac else { return Ok(None) };
        let mac: MacAddr = text.parse().map_err(|e| format!("guest_mac {e}"))?;
        if !mac.is_unicast() {
            return Err(format!(
                "guest_mac {mac} is a multicast address: the lowest bit of its first byte must be 0 \
                 for an interface's own address"
            ));
        }
        if mac.0 == [0; 6] {
            return Err("guest_mac 00:00:00:00:00:00 is not a valid interface address".into());
        }
        Ok(Some(mac))
    }
}

/// How the guest may cache what it reads from a virtio-fs share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCachePolicy {
    /// No caching: every access goes to the host (coherent with host-side changes).
    Never,
    /// Cache with short timeouts (the usual choice).
    #[default]
    Auto,
    /// Cache as long as the guest likes (fastest; host-side changes may be missed).
    Always,
}

/// `PUT /fs/{fs_id}` (husk's extension): a virtio-fs device serving a host
/// directory from inside the VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub fs_id: String,
    /// The mount tag the guest mounts (`mount -t virtiofs <tag> <dir>`), at most 36 bytes.
    pub tag: String,
    pub shared_dir: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cache: FsCachePolicy,
    /// The size of the DAX window in MiB: a range of guest-physical
    /// addresses the guest maps files of the share into (FUSE DAX, mount
    /// option `dax`). Absent: no DAX window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dax_window_mib: Option<u32>,
    /// Whether the guest may leave files owned by host root (uid or gid 0)
    /// in the share. Off (the default), the guest's root is squashed on
    /// what it creates: a file, directory, node or symlink the guest makes
    /// as uid or gid 0 (or that inherits gid 0 from a setgid directory),
    /// and a chown or chgrp to 0, gets `root_uid` / `root_gid` on the host
    /// instead; other ids pass through unchanged, and the guest sees the
    /// host's ids (no reverse mapping, like NFS root_squash). Also decides
    /// whether the guest may set `security.capability`. On: the guest's
    /// ids are written as they are, for a share that is the guest's own
    /// root file system on a host directory owned by root. Whatever the
    /// setting, the guest never sets setuid bits (nor setgid bits on
    /// anything but directories) and cannot make device nodes.
    #[serde(default)]
    pub allow_host_root: bool,
    /// The host uid that stands in for the guest's uid 0 when
    /// `allow_host_root` is off (default 65534, nobody). 0 only with
    /// `allow_host_root`.
    #[serde(default = "fs_default_root_id")]
    pub root_uid: u32,
    /// The host gid that stands in for the guest's gid 0, as `root_uid`
    /// (default 65534, nogroup).
    #[serde(default = "fs_default_root_id")]
    pub root_gid: u32,
}

/// The host uid and gid the guest's root gets on a share that does not
/// allow host root: 65534, the overflow id (nobody / nogroup).
pub const FS_DEFAULT_ROOT_ID: u32 = 65534;

fn fs_default_root_id() -> u32 {
    FS_DEFAULT_ROOT_ID
}

/// virtio-fs's config space holds the tag in 36 bytes.
pub const FS_TAG_MAX: usize = 36;

/// The largest DAX window, in MiB.
pub const FS_DAX_WINDOW_MAX_MIB: u32 = 4096;
/// The guest maps files into the window 2 MiB at a time, so its size is a
/// multiple of 2 MiB.
pub const FS_DAX_WINDOW_ALIGN_MIB: u32 = 2;

impl FsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty() || self.tag.len() > FS_TAG_MAX {
            return Err(format!("tag must be 1 to {FS_TAG_MAX} bytes, got {:?}", self.tag));
        }
        if self.shared_dir.is_empty() {
            return Err("shared_dir must not be empty".into());
        }
        if let Some(mib) = self.dax_window_mib {
            if mib == 0 || mib > FS_DAX_WINDOW_MAX_MIB || !mib.is_multiple_of(FS_DAX_WINDOW_ALIGN_MIB) {
                return Err(format!(
                    "dax_window_mib must be a multiple of {FS_DAX_WINDOW_ALIGN_MIB} from {FS_DAX_WINDOW_ALIGN_MIB} \
                     to {FS_DAX_WINDOW_MAX_MIB}, got {mib}"
                ));
            }
        }
        if !self.allow_host_root {
            for (field, id) in [("root_uid", self.root_uid), ("root_gid", self.root_gid)] {
                if id == 0 {
                    return Err(format!("{field} must not be 0 unless allow_host_root is true"));
                }
            }
        }
        // -1 is "no change" to chown(2): it cannot be an owner.
        for (field, id) in [("root_uid", self.root_uid), ("root_gid", self.root_gid)] {
            if id == u32::MAX {
                return Err(format!("{field} must not be {id} (chown's \"unchanged\")"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_cid_range() {
        let ok = VsockConfig { vsock_id: None, guest_cid: 3, uds_path: "/tmp/v.sock".into() };
        assert!(ok.validate().is_ok());
        for cid in [0, 2, u64::from(u32::MAX) + 1] {
            assert!(VsockConfig { guest_cid: cid, ..ok.clone() }.validate().is_err());
        }
    }

    #[test]
    fn fs_defaults_and_tag_limits() {
        let fs: FsConfig = serde_json::from_str(r#"{"fs_id": "root", "tag": "rootfs", "shared_dir": "/srv"}"#).unwrap();
        assert_eq!((fs.read_only, fs.cache, fs.dax_window_mib), (false, FsCachePolicy::Auto, None));
        assert!(fs.validate().is_ok());
        assert!(!serde_json::to_string(&fs).unwrap().contains("dax"), "no DAX window is not serialized");
        for ok in [2, 64, 4096] {
            assert!(FsConfig { dax_window_mib: Some(ok), ..fs.clone() }.validate().is_ok(), "{ok}");
        }
        for bad in [0, 1, 3, 4097, 4098, u32::MAX] {
            assert!(FsConfig { dax_window_mib: Some(bad), ..fs.clone() }.validate().is_err(), "{bad}");
        }
        assert!(FsConfig { tag: "x".repeat(37), ..fs.clone() }.validate().is_err());
        // The guest's root is squashed to nobody unless the share says
        // otherwise, and only then may it map to 0.
        assert_eq!((fs.allow_host_root, fs.root_uid, fs.root_gid), (false, 65534, 65534));
        for (uid, gid) in [(0, 65534), (65534, 0), (0, 0)] {
            let squashed = FsConfig { root_uid: uid, root_gid: gid, ..fs.clone() };
            let err = squashed.validate().unwrap_err();
            assert!(err.contains("allow_host_root"), "{err}");
            assert!(FsConfig { allow_host_root: true, ..squashed }.validate().is_ok());
        }
        assert!(FsConfig { root_uid: 1000, root_gid: 100, ..fs.clone() }.validate().is_ok());
        assert!(FsConfig { root_uid: u32::MAX, ..fs.clone() }.validate().is_err());
        assert!(FsConfig { root_gid: u32::MAX, allow_host_root: true, ..fs.clone() }.validate().is_err());
        assert!(
            serde_json::from_str::<FsConfig>(r#"{"fs_id": "r", "tag": "t", "shared_dir": "/", "dax": true}"#).is_err()
        );
    }

    #[test]
    fn network_interface_with_rate_limiters() {
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
            "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#;
        let net: NetworkInterfaceConfig = serde_json::from_str(body).unwrap();
        assert_eq!(net.rx_rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
        assert_eq!(net.tx_rate_limiter, None);
        assert!(net.validate().is_ok());
    }

    #[test]
    fn ids_are_ascii_alphanumeric_and_underscores_with_a_length_bound() {
        for ok in ["eth0", "root_fs", "_", "Z9", &"a".repeat(MAX_ID_LEN)] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_id(""), Err(IdError::Empty));
        // Unicode alphanumerics, which Firecracker takes, are refused too.
        for bad in ["eth-0", "a/b", "a b", "..", "x%2F", "{iface_id}", "a\0", "ÄÖ9", "٣", "é"] {
            assert_eq!(validate_id(bad), Err(IdError::InvalidCharacter), "{bad}");
        }
        assert_eq!(validate_id(&"a".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong));
        assert_eq!(IdError::Empty.to_string(), "The ID cannot be empty.");
        assert!(IdError::TooLong.to_string().contains("at most 64 bytes"));
    }

    #[test]
    fn mac_addresses_parse_strictly_and_display_in_lower_case() {
        let mac: MacAddr = "06:00:AC:10:00:0f".parse().unwrap();
        assert_eq!(mac, MacAddr([0x06, 0x00, 0xac, 0x10, 0x00, 0x0f]));
        assert_eq!(mac.to_string(), "06:00:ac:10:00:0f");
        assert!(mac.is_unicast());
        assert!(!MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "06:00:ac:10:00:2",
            "06:00:ac:10:00:002",
            "06:00:ac:10:00:+2",
            "06:00:ac:10:00:zz",
            "06-00-ac-10-00-02",
            "06:00:ac:10:00:02:",
        ] {
            let error = bad.parse::<MacAddr>().unwrap_err();
            assert!(error.to_string().contains("is not a MAC address"), "{bad}: {error}");
        }
    }

    fn net(guest_mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: guest_mac.map(Into::into),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn network_interfaces_need_a_unicast_mac_and_a_kernel_interface_name() {
        assert_eq!(net(None).guest_mac_addr(), Ok(None));
        assert_eq!(net(Some("06:00:ac:10:00:02")).guest_mac_addr(), Ok(Some(MacAddr([6, 0, 0xac, 0x10, 0, 2]))));
        assert!(net(Some("01:00:5e:00:00:01")).validate().unwrap_err().contains("multicast"));
        assert!(net(Some("ff:ff:ff:ff:ff:ff")).validate().unwrap_err().contains("multicast"));
        assert!(net(Some("00:00:00:00:00:00")).validate().unwrap_err().contains("not a valid interface address"));
        assert!(net(Some("06:00:ac")).validate().unwrap_err().starts_with("guest_mac \"06:00:ac\" is not a MAC"));

        for ok in ["t", "tap0", &"t".repeat(IFNAMSIZ - 1)] {
            assert_eq!(validate_host_dev_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", &"t".repeat(IFNAMSIZ)] {
            assert!(validate_host_dev_name(bad).unwrap_err().contains("1 to 15 bytes"), "{bad}");
        }
        for bad in [".", "..", "tap/0", "tap:0", "tap 0", "tap\t", "tap\0"] {
            assert!(validate_host_dev_name(bad).unwrap_err().contains("not a valid interface name"), "{bad:?}");
        }
        let error = NetworkInterfaceConfig { host_dev_name: "x".repeat(16), ..net(None) }.validate().unwrap_err();
        assert!(error.contains("host_dev_name"), "{error}");
    }

    #[test]
    fn token_buckets_must_refill_when_they_limit() {
        let bucket = |size, one_time_burst, refill_time| TokenBucket { size, one_time_burst, refill_time };
        assert!(bucket(1000, Some(10), 100).validate().is_ok());
        // Size 0 limits nothing, whatever the refill time (as Firecracker).
        assert!(bucket(0, None, 0).validate().is_ok());
        assert!(bucket(0, Some(0), 100).validate().is_ok());
        assert!(bucket(1000, None, 0).validate().unwrap_err().contains("refill_time must be at least 1 ms"));
        assert!(bucket(0, Some(5), 100).validate().unwrap_err().contains("one_time_burst"));

        let limiter = RateLimiterConfig { bandwidth: Some(bucket(1, None, 1)), ops: Some(bucket(5, None, 0)) };
        assert!(limiter.validate().unwrap_err().starts_with("ops: refill_time"));
        let error = NetworkInterfaceConfig { tx_rate_limiter: Some(limiter), ..net(None) }.validate().unwrap_err();
        assert!(error.starts_with("tx_rate_limiter.ops: refill_time must be"), "{error}");
        let body = r#"{"bandwidth": {"size": 1, "refill_time": 1, "burst": 2}}"#;
        assert!(serde_json::from_str::<RateLimiterConfig>(body).unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn vsock_paths_must_fit_a_socket_address() {
        let ok = VsockConfig { vsock_id: None, guest_cid: 3, uds_path: "/".repeat(UNIX_PATH_MAX - 1) };
        assert!(ok.validate().is_ok());
        let long = VsockConfig { uds_path: "/".repeat(UNIX_PATH_MAX), ..ok.clone() };
        assert!(long.validate().unwrap_err().contains("shorter than 108 bytes"));
        assert!(VsockConfig { uds_path: String::new(), ..ok.clone() }.validate().is_err());
        assert!(VsockConfig { uds_path: "/v\0".into(), ..ok }.validate().unwrap_err().contains("NUL"));
    }
}
