//! Device configuration bodies: `PUT /vsock`, `PUT /network-interfaces/{id}`
//! (Firecracker's), and `PUT /fs/{id}` (husk's extension).

use serde::{Deserialize, Serialize};

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
        Ok(())
    }
}

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
}

/// virtio-fs's config space holds the tag in 36 bytes.
pub const FS_TAG_MAX: usize = 36;

impl FsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty() || self.tag.len() > FS_TAG_MAX {
            return Err(format!("tag must be 1 to {FS_TAG_MAX} bytes, got {:?}", self.tag));
        }
        if self.shared_dir.is_empty() {
            return Err("shared_dir must not be empty".into());
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
        assert_eq!((fs.read_only, fs.cache), (false, FsCachePolicy::Auto));
        assert!(fs.validate().is_ok());
        assert!(FsConfig { tag: "x".repeat(37), ..fs.clone() }.validate().is_err());
        assert!(serde_json::from_str::<FsConfig>(r#"{"fs_id": "r", "tag": "t", "shared_dir": "/", "dax": true}"#).is_err());
    }

    #[test]
    fn network_interface_with_rate_limiters() {
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
            "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#;
        let net: NetworkInterfaceConfig = serde_json::from_str(body).unwrap();
        assert_eq!(net.rx_rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
        assert_eq!(net.tx_rate_limiter, None);
    }
}
