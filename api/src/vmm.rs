//! The bodies of the VMM's HTTP API and of its `--config-file`.
//!
//! husk-vmm's API is Firecracker's: same paths, same JSON field names, same
//! enum spellings, so tools and SDKs written for Firecracker drive husk
//! unchanged. `api/openapi.yaml` describes the endpoints; the types here are
//! the wire format both the server (`husk-vmm`) and clients compile against.
//!
//! Request bodies reject unknown fields, as Firecracker's do: a misspelt
//! optional field (`"track_dirty_page"`) would otherwise be silently ignored
//! and the VM configured differently from what the caller asked for.
//!
//! Parsing checks only the shape of a body; whether the values make sense
//! (vCPU count, memory size…) is decided by [`MachineConfig::validate`], which
//! the VMM calls, so the same rules apply to the API and the config file.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::devices::{FsConfig, NetworkInterfaceConfig, VsockConfig};

/// vCPUs of a VM that was not given a machine configuration (as Firecracker).
pub const DEFAULT_VCPU_COUNT: u8 = 1;

/// Memory of a VM that was not given a machine configuration (as Firecracker).
pub const DEFAULT_MEM_SIZE_MIB: usize = 128;

/// The most vCPUs a VM may have: Firecracker's limit, kept so that a
/// configuration accepted by one is accepted by the other.
pub const MAX_VCPU_COUNT: u8 = 32;

/// The most memory a VM may have: 256 GiB.
///
/// Firecracker sets no upper bound and fails later, at boot, when the memory
/// cannot be mapped. husk refuses at configuration time instead. The bound
/// comes from the guest-physical address space: x86_64 hosts with the
/// smallest physical address width KVM runs on (39 bits, many Intel client
/// CPUs) give a guest 512 GiB of physical addresses, of which the 32-bit MMIO
/// hole and the device regions take a part; 256 GiB fits on every such host
/// with room to spare, and is far more than a one-container microVM needs.
pub const MAX_MEM_SIZE_MIB: usize = 256 * 1024;

/// `PUT /boot-source`: the guest kernel, its initrd and command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Host path of the initrd, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line; the VMM's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// How guest memory is backed (`huge_pages` in the machine configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    #[default]
    None,
    /// Explicit 2 MiB hugetlbfs pages; the memory size must be a multiple of 2 MiB.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's static CPU templates (`cpu_template`, deprecated there).
///
/// husk accepts the field so that configurations written for Firecracker
/// parse, but implements no template: [`MachineConfig::validate`] refuses
/// every value except `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    /// No template: the guest sees the host CPU's features (husk's only mode).
    None,
}

/// `PUT /machine-config`, and the body of `GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to [`MAX_VCPU_COUNT`].
    pub vcpu_count: u8,
    /// Guest memory in MiB, 1 to [`MAX_MEM_SIZE_MIB`].
    pub mem_size_mib: usize,
    /// Simultaneous multithreading: expose the vCPUs as sibling threads.
    #[serde(default)]
    pub smt: bool,
    /// Accepted for compatibility; only `None` is valid (see [`CpuTemplate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Track pages the guest dirties (for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Page size backing guest memory.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPU_COUNT,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    /// Checks the values a body's shape cannot: ranges and combinations.
    /// The error is the sentence the API returns as `fault_message`.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPU_COUNT {
            return Err(format!("vcpu_count must be between 1 and {MAX_VCPU_COUNT}, got {}", self.vcpu_count));
        }
        // As Firecracker: with SMT the vCPUs are presented as pairs of
        // sibling threads, so an odd count other than 1 cannot be laid out.
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(format!("vcpu_count must be 1 or an even number when smt is enabled, got {}", self.vcpu_count));
        }
        if self.mem_size_mib == 0 {
            return Err("mem_size_mib must be at least 1".to_string());
        }
        if self.mem_size_mib > MAX_MEM_SIZE_MIB {
            return Err(format!(
                "mem_size_mib must be at most {MAX_MEM_SIZE_MIB} (256 GiB), got {}",
                self.mem_size_mib
            ));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && self.mem_size_mib % 2 == 1 {
            return Err(format!(
                "mem_size_mib must be a multiple of 2 when huge_pages is \"2M\", got {}",
                self.mem_size_mib
            ));
        }
        match self.cpu_template {
            None | Some(CpuTemplate::None) => Ok(()),
            Some(template) => Err(format!(
                "cpu_template {template:?} is not supported: husk exposes the host CPU's features; \
                 omit cpu_template or set it to \"None\""
            )),
        }
    }

    /// The configuration after a `PATCH /machine-config`: every field the
    /// update sets replaces this one's. The result is not validated.
    ///
    /// `cpu_template: "None"` clears the template, as in Firecracker, so
    /// `GET /machine-config` then omits the field.
    pub fn apply(&self, update: &MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: match update.cpu_template {
                None => self.cpu_template,
                Some(CpuTemplate::None) => None,
                Some(template) => Some(template),
            },
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        }
    }
}

/// `PATCH /machine-config`: any subset of [`MachineConfig`]'s fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether the update sets nothing (`{}`), which the API refuses as
    /// Firecracker does ("Empty PATCH request.").
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl From<MachineConfig> for MachineConfigUpdate {
    /// A `PUT` as an update that sets every field, which is how Firecracker
    /// applies it: `MachineConfig::default().apply(&put.into())`.
    fn from(config: MachineConfig) -> Self {
        Self {
            vcpu_count: Some(config.vcpu_count),
            mem_size_mib: Some(config.mem_size_mib),
            smt: Some(config.smt),
            cpu_template: config.cpu_template,
            track_dirty_pages: Some(config.track_dirty_pages),
            huge_pages: Some(config.huge_pages),
        }
    }
}

/// The `action_type` of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM (pre-boot only).
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's i8042 keyboard controller.
    SendCtrlAltDel,
    /// Write the metrics now rather than at the next periodic flush.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

/// The state `PATCH /vm` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub state: VmState,
}

/// The `level` of `PUT /logger`.
///
/// Serialized with the spellings of Firecracker's API description; parsed
/// case-insensitively, with `Warn` accepted for `Warning`, as Firecracker
/// parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

impl LogLevel {
    /// The spellings serialization uses, for error messages.
    pub const NAMES: &'static [&'static str] = &["Error", "Warning", "Info", "Debug", "Trace", "Off"];
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(Self::Error),
            "warning" | "warn" => Ok(Self::Warning),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            "trace" => Ok(Self::Trace),
            "off" => Ok(Self::Off),
            _ => Err(format!("unknown log level `{s}`, expected one of {} (any case)", Self::NAMES.join(", "))),
        }
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(|_| de::Error::unknown_variant(&name, Self::NAMES))
    }
}

/// `PUT /logger`.
///
/// `log_path` is required: husk logs to its standard error until the logger
/// is configured, and a logger without a destination would change nothing
/// but the level, which the `--level` option already sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// Named pipe or file the human-readable log is written to.
    pub log_path: String,
    /// Most verbose level written; Firecracker's default is `Info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Whether each line shows its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line shows the source file and line it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages from modules whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Named pipe or file the JSON metrics are flushed to.
    pub metrics_path: String,
}

/// The VMM's state as `GET /` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// Being configured: `InstanceStart` has not succeeded yet.
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The VMM's name ("husk" where Firecracker says "Firecracker").
    pub app_name: String,
    /// The instance ID given on the command line.
    pub id: String,
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
}

/// The body of every error response: `{"fault_message": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub fault_message: String,
}

impl ApiError {
    pub fn new(fault_message: impl Into<String>) -> Self {
        Self { fault_message: fault_message.into() }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fault_message)
    }
}

impl std::error::Error for ApiError {}

/// A section of Firecracker's configuration for a device husk does not
/// implement yet, whose value is one object (`"balloon": {…}`).
///
/// It is always absent: it serializes as `null`, as Firecracker serializes an
/// unconfigured device, and parsing refuses any value but `null`, because
/// silently booting a VM without a device its configuration asks for would
/// fail later and far from the cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnsupportedDevice;

impl Serialize for UnsupportedDevice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }
}

impl<'de> Deserialize<'de> for UnsupportedDevice {
    /// Accepts only `null`. [`FullVmConfig`] parses each section with a
    /// message naming it instead.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        unsupported::device(deserializer, "this device is not supported by husk yet")
    }
}

/// A section of Firecracker's configuration listing devices husk does not
/// implement yet (`"drives": […]`). Always empty: it serializes as `[]`, and
/// parsing refuses a non-empty list (see [`UnsupportedDevice`] for why).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnsupportedDeviceList;

impl Serialize for UnsupportedDeviceList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_seq(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for UnsupportedDeviceList {
    /// Accepts only `[]` or `null`. [`FullVmConfig`] parses each section
    /// with a message naming it instead.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        unsupported::list(deserializer, "these devices are not supported by husk yet")
    }
}

/// `GET /vm/config`, and the format of `--config-file`.
///
/// The keys are Firecracker's, plus husk's `"fs"` (virtio-fs shares, which
/// Firecracker lacks). Unlike Firecracker, which ignores keys it does not
/// know, a config file with an unknown top-level key is refused: a typo such
/// as `"machine_config"` would otherwise boot a VM with the defaults. Device
/// sections husk does not implement yet are accepted only empty (`[]`,
/// `null` or absent) and refused with a message naming them otherwise.
///
/// `GET /vm/config` serializes every key, unconfigured ones as `null` and
/// device lists as `[]`, as Firecracker does; a device list may also be
/// given as `null` in a config file. Devices are listed in the order they
/// were configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    #[serde(default, deserialize_with = "unsupported::balloon")]
    pub balloon: UnsupportedDevice,
    #[serde(default, deserialize_with = "unsupported::drives")]
    pub drives: UnsupportedDeviceList,
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "cpu-config", default, deserialize_with = "unsupported::cpu_config")]
    pub cpu_config: UnsupportedDevice,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "memory-hotplug", default, deserialize_with = "unsupported::memory_hotplug")]
    pub memory_hotplug: UnsupportedDevice,
    #[serde(rename = "mmds-config", default, deserialize_with = "unsupported::mmds_config")]
    pub mmds_config: UnsupportedDevice,
    #[serde(rename = "network-interfaces", default, deserialize_with = "nullable_list")]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default, deserialize_with = "unsupported::pmem")]
    pub pmem: UnsupportedDeviceList,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default, deserialize_with = "unsupported::entropy")]
    pub entropy: UnsupportedDevice,
    /// husk's extension: the virtio-fs shares (`PUT /fs/{fs_id}`).
    #[serde(default, deserialize_with = "nullable_list")]
    pub fs: Vec<FsConfig>,
}

/// A device list that may be written `null` for "none", as Firecracker's
/// own tools sometimes write an empty section.
fn nullable_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parsers of the device sections of [`FullVmConfig`] husk does not
/// implement: each accepts only an empty value and otherwise fails with a
/// message naming the section, which serde_json completes with its position.
mod unsupported {
    use super::*;

    /// Accepts `null`; refuses any other value with `message`.
    pub(super) fn device<'de, D: Deserializer<'de>>(
        deserializer: D,
        message: &str,
    ) -> Result<UnsupportedDevice, D::Error> {
        match Option::<IgnoredAny>::deserialize(deserializer)? {
            None => Ok(UnsupportedDevice),
            Some(_) => Err(de::Error::custom(message)),
        }
    }

    /// Accepts `[]` or `null`; refuses a non-empty list with `message`.
    pub(super) fn list<'de, D: Deserializer<'de>>(
        deserializer: D,
        message: &str,
    ) -> Result<UnsupportedDeviceList, D::Error> {
        match Option::<Vec<IgnoredAny>>::deserialize(deserializer)? {
            Some(devices) if !devices.is_empty() => Err(de::Error::custom(message)),
            _ => Ok(UnsupportedDeviceList),
        }
    }

    pub(super) fn balloon<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDevice, D::Error> {
        device(d, "\"balloon\": balloon devices are not supported by husk yet")
    }

    pub(super) fn drives<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDeviceList, D::Error> {
        list(d, "\"drives\": drives (block devices) are not supported by husk yet")
    }

    pub(super) fn cpu_config<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDevice, D::Error> {
        device(d, "\"cpu-config\": custom CPU templates are not supported by husk yet")
    }

    pub(super) fn memory_hotplug<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDevice, D::Error> {
        device(d, "\"memory-hotplug\": memory hotplug is not supported by husk yet")
    }

    pub(super) fn mmds_config<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDevice, D::Error> {
        device(d, "\"mmds-config\": the microVM metadata service is not supported by husk yet")
    }

    pub(super) fn pmem<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDeviceList, D::Error> {
        list(d, "\"pmem\": pmem devices are not supported by husk yet")
    }

    pub(super) fn entropy<'de, D: Deserializer<'de>>(d: D) -> Result<UnsupportedDevice, D::Error> {
        device(d, "\"entropy\": entropy devices are not supported by husk yet")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::devices::FsCachePolicy;

    fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(value: &T) {
        let text = serde_json::to_string(value).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), value, "{text}");
    }

    #[test]
    fn boot_source_round_trips_and_omits_absent_fields() {
        let full = BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: Some("/i".into()),
            boot_args: Some("console=ttyS0".into()),
        };
        round_trip(&full);
        let bare = BootSourceConfig { kernel_image_path: "/k".into(), initrd_path: None, boot_args: None };
        assert_eq!(serde_json::to_value(&bare).unwrap(), json!({"kernel_image_path": "/k"}));
        // Firecracker's own GET /vm/config writes absent fields as null.
        assert_eq!(parse::<BootSourceConfig>(r#"{"kernel_image_path":"/k","initrd_path":null}"#).unwrap(), bare);
        assert!(parse::<BootSourceConfig>(r#"{"boot_args":"x"}"#).unwrap_err().contains("missing field"));
    }

    #[test]
    fn request_bodies_reject_unknown_fields() {
        let cases = [
            parse::<BootSourceConfig>(r#"{"kernel_image_path":"/k","kernel_args":"x"}"#).err(),
            parse::<MachineConfig>(r#"{"vcpu_count":1,"mem_size_mib":128,"track_dirty_page":true}"#).err(),
            parse::<MachineConfigUpdate>(r#"{"vcpus":2}"#).err(),
            parse::<InstanceActionInfo>(r#"{"action_type":"InstanceStart","payload":"x"}"#).err(),
            parse::<Vm>(r#"{"state":"Paused","force":true}"#).err(),
            parse::<LoggerConfig>(r#"{"log_path":"/l","colour":true}"#).err(),
            parse::<MetricsConfig>(r#"{"metrics_path":"/m","period":1}"#).err(),
            parse::<FullVmConfig>(r#"{"machine_config":{"vcpu_count":1,"mem_size_mib":128}}"#).err(),
        ];
        for error in cases {
            let error = error.expect("an unknown field must be refused");
            assert!(error.contains("unknown field"), "{error}");
        }
    }

    #[test]
    fn machine_config_defaults_are_firecrackers() {
        let config = MachineConfig::default();
        assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));
        assert!(config.validate().is_ok());
        let parsed: MachineConfig = parse(r#"{"vcpu_count":2,"mem_size_mib":256}"#).unwrap();
        assert_eq!(parsed, MachineConfig { vcpu_count: 2, mem_size_mib: 256, ..MachineConfig::default() });
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            json!({
                "vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false, "huge_pages": "None"
            })
        );
        assert!(parse::<MachineConfig>(r#"{"vcpu_count":2}"#).unwrap_err().contains("missing field `mem_size_mib`"));
        assert!(parse::<MachineConfig>(r#"{"mem_size_mib":2}"#).unwrap_err().contains("missing field `vcpu_count`"));
    }

    #[test]
    fn machine_config_round_trips_with_every_field() {
        let config = MachineConfig {
            vcpu_count: 4,
            mem_size_mib: 2048,
            smt: true,
            cpu_template: Some(CpuTemplate::None),
            track_dirty_pages: true,
            huge_pages: HugePages::Hugetlbfs2M,
        };
        round_trip(&config);
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["huge_pages"], "2M");
        assert_eq!(value["cpu_template"], "None");
        assert!(parse::<MachineConfig>(r#"{"vcpu_count":1,"mem_size_mib":2,"huge_pages":"1G"}"#)
            .unwrap_err()
            .contains("unknown variant `1G`"));
        assert!(parse::<MachineConfig>(r#"{"vcpu_count":300,"mem_size_mib":2}"#).unwrap_err().contains("u8"));
    }

    #[test]
    fn validate_refuses_out_of_range_vcpus() {
        let with = |vcpu_count, smt| MachineConfig { vcpu_count, smt, ..MachineConfig::default() }.validate();
        assert_eq!(with(0, false).unwrap_err(), "vcpu_count must be between 1 and 32, got 0");
        assert_eq!(with(33, false).unwrap_err(), "vcpu_count must be between 1 and 32, got 33");
        assert!(with(1, false).is_ok());
        assert!(with(32, false).is_ok());
        assert!(with(3, false).is_ok());
        // SMT: 1 or even, as Firecracker.
        assert!(with(3, true).unwrap_err().contains("1 or an even number"));
        assert!(with(31, true).is_err());
        assert!(with(1, true).is_ok());
        assert!(with(2, true).is_ok());
        assert!(with(32, true).is_ok());
    }

    #[test]
    fn validate_refuses_bad_memory_sizes() {
        let with = |mem_size_mib, huge_pages| {
            MachineConfig { mem_size_mib, huge_pages, ..MachineConfig::default() }.validate()
        };
        assert_eq!(with(0, HugePages::None).unwrap_err(), "mem_size_mib must be at least 1");
        assert!(with(1, HugePages::None).is_ok());
        assert!(with(MAX_MEM_SIZE_MIB, HugePages::None).is_ok());
        assert!(with(MAX_MEM_SIZE_MIB + 1, HugePages::None).unwrap_err().contains("at most 262144"));
        assert!(with(usize::MAX, HugePages::None).is_err());
        assert!(with(129, HugePages::Hugetlbfs2M).unwrap_err().contains("multiple of 2"));
        assert!(with(128, HugePages::Hugetlbfs2M).is_ok());
    }

    #[test]
    fn validate_accepts_only_the_none_cpu_template() {
        let with = |cpu_template| MachineConfig { cpu_template, ..MachineConfig::default() }.validate();
        assert!(with(None).is_ok());
        assert!(with(Some(CpuTemplate::None)).is_ok());
        for template in [CpuTemplate::C3, CpuTemplate::T2, CpuTemplate::T2S, CpuTemplate::T2CL, CpuTemplate::T2A] {
            assert!(with(Some(template)).unwrap_err().contains("not supported"), "{template:?}");
        }
        let parsed: MachineConfig = parse(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"V1N1"}"#).unwrap();
        assert_eq!(parsed.cpu_template, Some(CpuTemplate::V1N1));
    }

    #[test]
    fn apply_replaces_only_the_fields_an_update_sets() {
        let base = MachineConfig { vcpu_count: 2, mem_size_mib: 512, ..MachineConfig::default() };
        let update: MachineConfigUpdate = parse(r#"{"mem_size_mib":1024,"track_dirty_pages":true}"#).unwrap();
        assert!(!update.is_empty());
        assert_eq!(
            base.apply(&update),
            MachineConfig { vcpu_count: 2, mem_size_mib: 1024, track_dirty_pages: true, ..MachineConfig::default() }
        );
        assert_eq!(base.apply(&MachineConfigUpdate::default()), base);
        assert!(parse::<MachineConfigUpdate>("{}").unwrap().is_empty());

        // "None" clears a template; an absent field keeps it.
        let templated = MachineConfig { cpu_template: Some(CpuTemplate::T2), ..base.clone() };
        assert_eq!(templated.apply(&MachineConfigUpdate::default()).cpu_template, Some(CpuTemplate::T2));
        let clear = MachineConfigUpdate { cpu_template: Some(CpuTemplate::None), ..Default::default() };
        assert_eq!(templated.apply(&clear).cpu_template, None);

        // A PUT is an update of every field on top of the defaults.
        let put = MachineConfig { vcpu_count: 4, mem_size_mib: 64, smt: true, ..MachineConfig::default() };
        assert_eq!(MachineConfig::default().apply(&put.clone().into()), put);
        round_trip(&MachineConfigUpdate::from(put));
        assert_eq!(serde_json::to_string(&MachineConfigUpdate::default()).unwrap(), "{}");
    }

    #[test]
    fn actions_and_vm_state_use_firecrackers_spellings() {
        for (name, action) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
            ("FlushMetrics", ActionType::FlushMetrics),
        ] {
            let text = format!(r#"{{"action_type":"{name}"}}"#);
            assert_eq!(parse::<InstanceActionInfo>(&text).unwrap(), InstanceActionInfo { action_type: action });
            assert_eq!(serde_json::to_string(&InstanceActionInfo { action_type: action }).unwrap(), text);
        }
        assert!(parse::<InstanceActionInfo>(r#"{"action_type":"instancestart"}"#)
            .unwrap_err()
            .contains("unknown variant"));
        assert_eq!(parse::<Vm>(r#"{"state":"Paused"}"#).unwrap(), Vm { state: VmState::Paused });
        assert_eq!(serde_json::to_string(&Vm { state: VmState::Resumed }).unwrap(), r#"{"state":"Resumed"}"#);
        assert!(parse::<Vm>(r#"{"state":"Stopped"}"#).is_err());
        assert!(parse::<Vm>("{}").unwrap_err().contains("missing field `state`"));
    }

    #[test]
    fn log_levels_parse_in_any_case_and_serialize_as_documented() {
        for (spellings, level) in [
            (&["Error", "error", "ERROR"][..], LogLevel::Error),
            (&["Warning", "warning", "WARN", "Warn", "wArNiNg"][..], LogLevel::Warning),
            (&["Info", "INFO"][..], LogLevel::Info),
            (&["Debug", "debug"][..], LogLevel::Debug),
            (&["Trace", "tRACE"][..], LogLevel::Trace),
            (&["Off", "OFF"][..], LogLevel::Off),
        ] {
            for spelling in spellings {
                let config: LoggerConfig = parse(&format!(r#"{{"log_path":"/l","level":"{spelling}"}}"#)).unwrap();
                assert_eq!(config.level, Some(level), "{spelling}");
                assert_eq!(spelling.parse::<LogLevel>(), Ok(level));
            }
            round_trip(&LoggerConfig {
                log_path: "/l".into(),
                level: Some(level),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: Some("husk_vmm::api_server".into()),
            });
        }
        assert_eq!(serde_json::to_value(LogLevel::Warning).unwrap(), "Warning");
        let error = parse::<LoggerConfig>(r#"{"log_path":"/l","level":"verbose"}"#).unwrap_err();
        assert!(error.contains("unknown variant `verbose`"), "{error}");
        assert!("loud".parse::<LogLevel>().unwrap_err().contains("Error, Warning, Info, Debug, Trace, Off"));
        let bare: LoggerConfig = parse(r#"{"log_path":"/l"}"#).unwrap();
        assert_eq!(serde_json::to_value(&bare).unwrap(), json!({"log_path": "/l"}));
        assert!(parse::<LoggerConfig>(r#"{"level":"Info"}"#).unwrap_err().contains("missing field `log_path`"));
    }

    #[test]
    fn metrics_instance_info_and_errors_round_trip() {
        round_trip(&MetricsConfig { metrics_path: "/m".into() });
        for (state, name) in [
            (InstanceState::NotStarted, "Not started"),
            (InstanceState::Running, "Running"),
            (InstanceState::Paused, "Paused"),
        ] {
            let info = InstanceInfo { app_name: "husk".into(), id: "vm0".into(), state, vmm_version: "0.1.0".into() };
            round_trip(&info);
            assert_eq!(
                serde_json::to_value(&info).unwrap(),
                json!({"app_name": "husk", "id": "vm0", "state": name, "vmm_version": "0.1.0"})
            );
        }
        let error = ApiError::new("bad");
        assert_eq!(serde_json::to_string(&error).unwrap(), r#"{"fault_message":"bad"}"#);
        assert_eq!(error.to_string(), "bad");
        round_trip(&error);
    }

    #[test]
    fn full_vm_config_serializes_like_firecrackers_get_vm_config() {
        let config = FullVmConfig {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: "/vmlinux".into(),
                initrd_path: None,
                boot_args: Some("console=ttyS0".into()),
            }),
            machine_config: Some(MachineConfig::default()),
            ..FullVmConfig::default()
        };
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({
                "balloon": null,
                "drives": [],
                "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"},
                "cpu-config": null,
                "logger": null,
                "machine-config": {
                    "vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                    "track_dirty_pages": false, "huge_pages": "None"
                },
                "metrics": null,
                "memory-hotplug": null,
                "mmds-config": null,
                "network-interfaces": [],
                "pmem": [],
                "vsock": null,
                "entropy": null,
                "fs": []
            })
        );
        // What GET /vm/config returns is a valid config file.
        round_trip(&config);
        round_trip(&FullVmConfig::default());
        assert_eq!(parse::<FullVmConfig>("{}").unwrap(), FullVmConfig::default());
    }

    #[test]
    fn config_file_in_firecrackers_format_parses() {
        // A config file as Firecracker's documentation writes them, with the
        // device sections a VM without devices has.
        let text = r#"{
            "boot-source": {
                "kernel_image_path": "vmlinux.bin",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
                "initrd_path": null
            },
            "drives": [],
            "machine-config": {
                "vcpu_count": 2,
                "mem_size_mib": 1024,
                "smt": false,
                "track_dirty_pages": false,
                "huge_pages": "None"
            },
            "cpu-config": null,
            "balloon": null,
            "network-interfaces": [],
            "vsock": null,
            "logger": {"log_path": "/tmp/fc.log", "level": "Debug", "show_level": true, "show_log_origin": true},
            "metrics": {"metrics_path": "/tmp/fc-metrics.fifo"},
            "mmds-config": null,
            "entropy": null
        }"#;
        let config: FullVmConfig = parse(text).unwrap();
        let boot = config.boot_source.as_ref().unwrap();
        assert_eq!(boot.kernel_image_path, "vmlinux.bin");
        assert_eq!(boot.boot_args.as_deref(), Some("console=ttyS0 reboot=k panic=1 pci=off"));
        assert_eq!(boot.initrd_path, None);
        let machine = config.machine_config.as_ref().unwrap();
        assert_eq!((machine.vcpu_count, machine.mem_size_mib), (2, 1024));
        assert_eq!(config.logger.as_ref().unwrap().level, Some(LogLevel::Debug));
        assert_eq!(config.metrics.as_ref().unwrap().metrics_path, "/tmp/fc-metrics.fifo");
    }

    #[test]
    fn config_file_with_devices_husk_lacks_is_refused_by_name() {
        let cases = [
            (
                r#"{"drives":[{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}]}"#,
                "\"drives\"",
            ),
            (r#"{"pmem":[{"id":"p","path_on_host":"/p"}]}"#, "\"pmem\""),
            (r#"{"balloon":{"amount_mib":0,"deflate_on_oom":false}}"#, "\"balloon\""),
            (r#"{"entropy":{}}"#, "\"entropy\""),
            (r#"{"mmds-config":{"network_interfaces":["eth0"]}}"#, "\"mmds-config\""),
            (r#"{"cpu-config":"/templates/t2.json"}"#, "\"cpu-config\""),
            (r#"{"memory-hotplug":{"total_size_mib":1024}}"#, "\"memory-hotplug\""),
        ];
        for (text, section) in cases {
            let error = parse::<FullVmConfig>(text).unwrap_err();
            assert!(error.starts_with(section) && error.contains("not supported by husk yet"), "{text}: {error}");
        }
        // The section types on their own.
        assert_eq!(parse::<UnsupportedDevice>("null").unwrap(), UnsupportedDevice);
        assert!(parse::<UnsupportedDevice>("{}").unwrap_err().contains("not supported by husk yet"));
        assert_eq!(parse::<UnsupportedDeviceList>("[]").unwrap(), UnsupportedDeviceList);
        assert!(parse::<UnsupportedDeviceList>("[{}]").unwrap_err().contains("not supported by husk yet"));
        // Empty and null sections are fine, in every spelling.
        let empty = r#"{"drives":null,"network-interfaces":[],"pmem":[],"vsock":null,"balloon":null,"fs":[]}"#;
        assert_eq!(parse::<FullVmConfig>(empty).unwrap(), FullVmConfig::default());
        let null_lists = r#"{"network-interfaces":null,"fs":null}"#;
        assert_eq!(parse::<FullVmConfig>(null_lists).unwrap(), FullVmConfig::default());
    }

    #[test]
    fn config_file_device_sections_parse_in_order() {
        let text = r#"{
            "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"},
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                 "rx_rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 10, "refill_time": 100}},
                 "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}},
                {"iface_id": "eth1", "host_dev_name": "tap1"}
            ],
            "fs": [
                {"fs_id": "root", "tag": "rootfs", "shared_dir": "/srv/root", "read_only": true, "cache": "never"},
                {"fs_id": "data", "tag": "data", "shared_dir": "/srv/data"}
            ]
        }"#;
        let config: FullVmConfig = parse(text).unwrap();
        assert_eq!(config.vsock, Some(VsockConfig { vsock_id: None, guest_cid: 3, uds_path: "/run/v.sock".into() }));
        let ids: Vec<&str> = config.network_interfaces.iter().map(|n| n.iface_id.as_str()).collect();
        assert_eq!(ids, ["eth0", "eth1"]);
        let eth0 = &config.network_interfaces[0];
        assert_eq!(eth0.guest_mac.as_deref(), Some("06:00:ac:10:00:02"));
        let bandwidth = eth0.rx_rate_limiter.unwrap().bandwidth.unwrap();
        assert_eq!((bandwidth.size, bandwidth.one_time_burst, bandwidth.refill_time), (1000, Some(10), 100));
        assert_eq!(eth0.tx_rate_limiter.unwrap().ops.unwrap().size, 10);
        assert_eq!(config.network_interfaces[1].guest_mac, None);
        let ids: Vec<&str> = config.fs.iter().map(|f| f.fs_id.as_str()).collect();
        assert_eq!(ids, ["root", "data"]);
        assert_eq!((config.fs[0].read_only, config.fs[0].cache), (true, FsCachePolicy::Never));
        assert_eq!((config.fs[1].read_only, config.fs[1].cache), (false, FsCachePolicy::Auto));
        // What GET /vm/config writes back is the same configuration.
        round_trip(&config);
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["vsock"], json!({"guest_cid": 3, "uds_path": "/run/v.sock"}));
        assert_eq!(value["network-interfaces"][1], json!({"iface_id": "eth1", "host_dev_name": "tap1"}));
        assert_eq!(value["fs"][1]["cache"], "auto");

        // Firecracker's deprecated vsock_id is accepted and kept.
        let config: FullVmConfig = parse(r#"{"vsock":{"vsock_id":"v","guest_cid":9,"uds_path":"/v"}}"#).unwrap();
        assert_eq!(config.vsock.unwrap().vsock_id.as_deref(), Some("v"));
    }

    #[test]
    fn config_file_device_sections_report_errors_inside_them() {
        for (text, expect) in [
            (r#"{"vsock":{"guest_cid":3}}"#, "missing field `uds_path`"),
            (r#"{"vsock":{"guest_cid":-3,"uds_path":"/v"}}"#, "invalid value"),
            (r#"{"vsock":"/v.sock"}"#, "invalid type"),
            (r#"{"network-interfaces":[{"iface_id":"eth0"}]}"#, "missing field `host_dev_name`"),
            (r#"{"network-interfaces":[{"iface_id":"e","host_dev_name":"t","mtu":1500}]}"#, "unknown field `mtu`"),
            (r#"{"network-interfaces":{"iface_id":"e","host_dev_name":"t"}}"#, "invalid type"),
            (
                r#"{"network-interfaces":[{"iface_id":"e","host_dev_name":"t","rx_rate_limiter":{"bytes":{}}}]}"#,
                "unknown field `bytes`",
            ),
            (r#"{"fs":[{"fs_id":"r","tag":"t"}]}"#, "missing field `shared_dir`"),
            (r#"{"fs":[{"fs_id":"r","tag":"t","shared_dir":"/","cache":"Auto"}]}"#, "unknown variant `Auto`"),
            (r#"{"fs":{"fs_id":"r","tag":"t","shared_dir":"/"}}"#, "invalid type"),
        ] {
            let error = parse::<FullVmConfig>(text).unwrap_err();
            assert!(error.contains(expect), "{text}: {error}");
        }
    }

    #[test]
    fn config_file_reports_errors_inside_sections() {
        let error = parse::<FullVmConfig>(r#"{"machine-config":{"vcpu_count":1}}"#).unwrap_err();
        assert!(error.contains("missing field `mem_size_mib`"), "{error}");
        let error = parse::<FullVmConfig>(r#"{"boot-source":{"kernel_image_path":"/k","initrd":"/i"}}"#).unwrap_err();
        assert!(error.contains("unknown field `initrd`"), "{error}");
        assert!(parse::<FullVmConfig>("null").is_err());
        assert!(parse::<FullVmConfig>(r#""boot-source""#).is_err());
    }
}
