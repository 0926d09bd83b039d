//! The size of a container's microVM, from its OCI spec.
//!
//! The VM is the container's resource boundary: its memory and vCPUs are
//! what the engine asked the cgroup to allow (`podman run --memory 64m
//! --cpus 1.5`), plus what the guest itself needs for memory. The engine's
//! limits are still applied inside the guest by the agent, so the
//! container sees the same cgroup limits as under runc.
//!
//! Two annotations override the derived size, for workloads whose needs
//! the cgroup limits do not express:
//! - `husk.memory_mib`: the VM's whole memory in MiB, overhead included;
//! - `husk.vcpus`: the number of vCPUs.

use husk_api::vmm::{MachineConfig, MAX_MEM_SIZE_MIB, MAX_VCPU_COUNT};
use oci_spec::runtime::Spec;

/// Annotation setting the VM's total memory in MiB (decimal).
pub const MEMORY_ANNOTATION: &str = "husk.memory_mib";

/// Annotation setting the VM's vCPU count (decimal).
pub const VCPUS_ANNOTATION: &str = "husk.vcpus";

/// Memory the guest needs outside the container's cgroup: the kernel, its
/// page cache and slabs, and the agent. Chosen from the guest's measured
/// footprint (kernel and agent idle, before the container starts) with
/// room for the page cache the container's files need; to be adjusted as
/// measurements change.
pub const GUEST_OVERHEAD_MIB: u32 = 64;

/// Memory of a VM whose container has no memory limit.
pub const DEFAULT_MEM_MIB: u32 = 512;

/// The smallest VM: the guest kernel and agent do not boot reliably in less.
pub const MIN_MEM_MIB: u32 = 64;

/// The largest VM: the VMM's own limit (`husk_api::vmm::MAX_MEM_SIZE_MIB`),
/// so that a size accepted here is never refused when the VM is configured.
pub const MAX_MEM_MIB: u32 = MAX_MEM_SIZE_MIB as u32;

/// vCPUs of a VM whose container has no CPU limit.
pub const DEFAULT_VCPUS: u8 = 1;

/// The most vCPUs a VM may have (the VMM's limit).
pub const MAX_VCPUS: u8 = MAX_VCPU_COUNT;

/// The CFS period the kernel uses when a quota is set without one (µs).
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

const MIB: u64 = 1 << 20;

/// A microVM's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u8,
    pub mem_mib: u32,
}

impl VmSize {
    /// The VMM's machine configuration for this size (no SMT, regular pages).
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig { vcpu_count: self.vcpus, mem_size_mib: self.mem_mib as usize, ..MachineConfig::default() }
    }
}

/// Why a VM size could not be derived from a spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    /// A `husk.*` sizing annotation has a value that cannot be used.
    #[error("annotation {name}={value:?}: {reason}")]
    Annotation { name: &'static str, value: String, reason: String },
    /// A resource of the spec has a value that is invalid or too large for
    /// a VM.
    #[error("{field} = {value}: {reason}")]
    Resource { field: &'static str, value: String, reason: String },
}

/// The VM size for a container with `spec`, on a host with `host_cpus`
/// CPUs (see [`host_cpu_count`]).
///
/// Memory: the annotation [`MEMORY_ANNOTATION`] if set; else the memory
/// limit rounded up to MiB plus [`GUEST_OVERHEAD_MIB`]; else (no limit,
/// 0, or -1 for unlimited) [`DEFAULT_MEM_MIB`].
///
/// vCPUs: the annotation [`VCPUS_ANNOTATION`] (1 to [`MAX_VCPUS`], more than
/// the host has is allowed: an explicit request to overcommit) if set; else
/// the CFS quota divided by its period, rounded up; else the number of CPUs
/// in the cpuset; else [`DEFAULT_VCPUS`]. Derived counts are clamped to the
/// host's CPUs and [`MAX_VCPUS`], because a VM with more vCPUs than host
/// CPUs only adds scheduling overhead.
pub fn vm_size(spec: &Spec, host_cpus: u32) -> Result<VmSize, SizingError> {
    let annotations = spec.annotations().as_ref();
    let annotation = |name: &str| annotations.and_then(|a| a.get(name));
    let resources = spec.linux().as_ref().and_then(|linux| linux.resources().as_ref());

    let mem_mib = match annotation(MEMORY_ANNOTATION) {
        Some(value) => memory_annotation(value)?,
        None => {
            let limit = resources.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit());
            memory_from_limit(limit)?
        }
    };

    let vcpus = match annotation(VCPUS_ANNOTATION) {
        Some(value) => vcpus_annotation(value)?,
        None => {
            let cpu = resources.and_then(|r| r.cpu().as_ref());
            let derived = match cpu {
                Some(cpu) => vcpus_from_cpu(cpu.quota(), cpu.period(), cpu.cpus().as_deref())?,
                None => None,
            };
            let host_limit = host_cpus.clamp(1, u32::from(MAX_VCPUS));
            match derived {
                // Fits in u8: at most MAX_VCPUS.
                Some(count) => count.clamp(1, u64::from(host_limit)) as u8,
                None => DEFAULT_VCPUS,
            }
        }
    };
    Ok(VmSize { vcpus, mem_mib })
}

/// The CPUs this process may run on, which is what a VM started from it
/// can use: the affinity mask's size, or 1 if it cannot be read.
pub fn host_cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

fn memory_from_limit(limit: Option<i64>) -> Result<u32, SizingError> {
    let bytes = match limit {
        // 0 is "not set" to runc too; -1 is the spec's "unlimited".
        None | Some(0) | Some(-1) => return Ok(DEFAULT_MEM_MIB),
        Some(bytes) if bytes < 0 => {
            return Err(SizingError::Resource {
                field: "linux.resources.memory.limit",
                value: bytes.to_string(),
                reason: "a memory limit is a number of bytes, or -1 for no limit".into(),
            })
        }
        Some(bytes) => bytes as u64,
    };
    let total = bytes.div_ceil(MIB) + u64::from(GUEST_OVERHEAD_MIB);
    if total > u64::from(MAX_MEM_MIB) {
        return Err(SizingError::Resource {
            field: "linux.resources.memory.limit",
            value: bytes.to_string(),
            reason: format!(
                "a VM for this limit needs {total} MiB ({GUEST_OVERHEAD_MIB} MiB for the guest included), \
                 more than the {MAX_MEM_MIB} MiB a VM may have"
            ),
        });
    }
    Ok((total as u32).max(MIN_MEM_MIB))
}

fn memory_annotation(value: &str) -> Result<u32, SizingError> {
    let error = |reason: String| SizingError::Annotation { name: MEMORY_ANNOTATION, value: value.to_owned(), reason };
    let mib = parse_decimal(value).ok_or_else(|| error("not a decimal number of MiB".into()))?;
    if mib < u64::from(MIN_MEM_MIB) {
        return Err(error(format!("a VM needs at least {MIN_MEM_MIB} MiB")));
    }
    if mib > u64::from(MAX_MEM_MIB) {
        return Err(error(format!("a VM may have at most {MAX_MEM_MIB} MiB")));
    }
    Ok(mib as u32)
}

fn vcpus_annotation(value: &str) -> Result<u8, SizingError> {
    let error = |reason: String| SizingError::Annotation { name: VCPUS_ANNOTATION, value: value.to_owned(), reason };
    let count = parse_decimal(value).ok_or_else(|| error("not a decimal number of vCPUs".into()))?;
    if count == 0 || count > u64::from(MAX_VCPUS) {
        return Err(error(format!("a VM has 1 to {MAX_VCPUS} vCPUs")));
    }
    Ok(count as u8)
}

/// Digits only: `u64::from_str` also takes a sign, which an annotation
/// meant as a count should not have.
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The CPUs a cgroup's CPU settings allow, unclamped: the quota if it
/// limits, else the cpuset's size; None when neither limits.
fn vcpus_from_cpu(quota: Option<i64>, period: Option<u64>, cpuset: Option<&str>) -> Result<Option<u64>, SizingError> {
    // A quota of -1 (or none) is no limit; 0 is "not set" to runc.
    if let Some(quota) = quota.filter(|&q| q > 0) {
        let period = match period {
            None | Some(0) => DEFAULT_CPU_PERIOD_US,
            Some(period) => period,
        };
        return Ok(Some((quota as u64).div_ceil(period)));
    }
    match cpuset.map(str::trim).filter(|s| !s.is_empty()) {
        Some(list) => count_cpu_list(list).map(Some).map_err(|reason| SizingError::Resource {
            field: "linux.resources.cpu.cpus",
            value: list.into(),
            reason,
        }),
        None => Ok(None),
    }
}

/// The number of CPUs in a kernel CPU list (`0-1,3` is 3). A CPU listed
/// twice counts once.
fn count_cpu_list(list: &str) -> Result<u64, String> {
    let number = |text: &str| parse_decimal(text.trim()).ok_or_else(|| format!("{text:?} is not a CPU number"));
    let mut ranges = Vec::new();
    for item in list.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => {
                let cpu = number(item)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(format!("the range {item:?} ends before it starts"));
        }
        ranges.push((first, last));
    }
    ranges.sort_unstable();
    let mut count = 0;
    let mut covered_to: Option<u64> = None;
    for (first, last) in ranges {
        let start = match covered_to {
            Some(end) if end >= last => continue,
            Some(end) if end >= first => end + 1,
            _ => first,
        };
        count += last - start + 1;
        covered_to = Some(last);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn resources(resources: serde_json::Value) -> Spec {
        spec(serde_json::json!({"linux": {"resources": resources}}))
    }

    fn annotated(name: &str, value: &str) -> Spec {
        spec(serde_json::json!({"annotations": {name: value}}))
    }

    #[test]
    fn a_spec_without_limits_gets_the_defaults() {
        let size = VmSize { vcpus: DEFAULT_VCPUS, mem_mib: DEFAULT_MEM_MIB };
        assert_eq!(vm_size(&spec(serde_json::json!({})), 8), Ok(size));
        assert_eq!(vm_size(&resources(serde_json::json!({})), 8), Ok(size));
        let unlimited = resources(serde_json::json!({"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}}));
        assert_eq!(vm_size(&unlimited, 8), Ok(size));
        let unset = resources(serde_json::json!({"memory": {"limit": 0}, "cpu": {"quota": 0, "cpus": ""}}));
        assert_eq!(vm_size(&unset, 8), Ok(size));
    }

    #[test]
    fn memory_is_the_limit_plus_the_guest_overhead() {
        // podman run --memory 64m (the swap limit plays no part).
        let podman = resources(serde_json::json!({"memory": {"limit": 67108864, "swap": 134217728}}));
        assert_eq!(vm_size(&podman, 2).unwrap().mem_mib, 64 + GUEST_OVERHEAD_MIB);
        // Rounded up to whole MiB.
        let odd = resources(serde_json::json!({"memory": {"limit": 67108865}}));
        assert_eq!(vm_size(&odd, 2).unwrap().mem_mib, 65 + GUEST_OVERHEAD_MIB);
        let tiny = resources(serde_json::json!({"memory": {"limit": 4096}}));
        assert_eq!(vm_size(&tiny, 2).unwrap().mem_mib, (1 + GUEST_OVERHEAD_MIB).max(MIN_MEM_MIB));
    }

    #[test]
    fn absurd_memory_limits_are_refused() {
        let largest = (u64::from(MAX_MEM_MIB - GUEST_OVERHEAD_MIB) * MIB) as i64;
        let fits = resources(serde_json::json!({"memory": {"limit": largest}}));
        assert_eq!(vm_size(&fits, 2).unwrap().mem_mib, MAX_MEM_MIB);
        for limit in [largest + 1, 1 << 40, i64::MAX] {
            let error = vm_size(&resources(serde_json::json!({"memory": {"limit": limit}})), 2).unwrap_err();
            assert!(
                matches!(&error, SizingError::Resource { field: "linux.resources.memory.limit", .. }),
                "{limit}: {error:?}"
            );
            assert!(error.to_string().contains("more than the 262144 MiB"), "{error}");
        }
        let negative = resources(serde_json::json!({"memory": {"limit": -2}}));
        assert!(matches!(vm_size(&negative, 2), Err(SizingError::Resource { .. })));
    }

    #[test]
    fn the_memory_annotation_sets_the_total() {
        let mut spec = resources(serde_json::json!({"memory": {"limit": 67108864}}));
        spec.set_annotations(Some([(MEMORY_ANNOTATION.to_owned(), "1024".to_owned())].into()));
        assert_eq!(vm_size(&spec, 2).unwrap().mem_mib, 1024);
        assert_eq!(vm_size(&annotated(MEMORY_ANNOTATION, "64"), 2).unwrap().mem_mib, 64);

        for (value, reason) in [
            ("", "not a decimal"),
            ("1g", "not a decimal"),
            ("+128", "not a decimal"),
            (" 128", "not a decimal"),
            ("-1", "not a decimal"),
            ("99999999999999999999999", "not a decimal"),
            ("63", "at least 64 MiB"),
            ("0", "at least 64 MiB"),
            ("262145", "at most 262144 MiB"),
        ] {
            let error = vm_size(&annotated(MEMORY_ANNOTATION, value), 2).unwrap_err();
            match &error {
                SizingError::Annotation { name, value: got, reason: why } => {
                    assert_eq!((*name, got.as_str()), (MEMORY_ANNOTATION, value));
                    assert!(why.contains(reason), "{value:?}: {why}");
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn vcpus_are_the_quota_over_the_period_rounded_up_and_clamped() {
        let cpus = |quota: i64, period: u64, host: u32| {
            vm_size(&resources(serde_json::json!({"cpu": {"quota": quota, "period": period}})), host).unwrap().vcpus
        };
        // podman run --cpus 1.5
        assert_eq!(cpus(150_000, 100_000, 4), 2);
        assert_eq!(cpus(100_000, 100_000, 4), 1);
        assert_eq!(cpus(1_000, 100_000, 4), 1);
        assert_eq!(cpus(400_000, 100_000, 4), 4);
        assert_eq!(cpus(400_000, 100_000, 2), 2, "clamped to the host's CPUs");
        assert_eq!(cpus(100_000_000, 100_000, 64), MAX_VCPUS, "clamped to the VMM's limit");
        assert_eq!(cpus(i64::MAX, 1, 4), 4);
        // Without a period the kernel's 100 ms applies.
        let no_period = resources(serde_json::json!({"cpu": {"quota": 250000}}));
        assert_eq!(vm_size(&no_period, 8).unwrap().vcpus, 3);
        // A host CPU count of 0 (unknown) still gives a VM a vCPU.
        assert_eq!(cpus(300_000, 100_000, 0), 1);
    }

    #[test]
    fn vcpus_follow_the_cpuset_without_a_quota() {
        let cpus = |list: &str, host: u32| {
            vm_size(&resources(serde_json::json!({"cpu": {"cpus": list}})), host).map(|size| size.vcpus)
        };
        assert_eq!(cpus("0-1,3", 8), Ok(3));
        assert_eq!(cpus("5", 8), Ok(1));
        assert_eq!(cpus("0-3,2-5,5", 8), Ok(6), "overlaps count once");
        assert_eq!(cpus("0-7", 2), Ok(2), "clamped to the host's CPUs");
        assert_eq!(cpus(" 0-2\n", 8), Ok(3));
        for bad in ["0-", "a", "3-1", "0,,1", "-1"] {
            let error = cpus(bad, 8).unwrap_err();
            assert!(matches!(error, SizingError::Resource { field: "linux.resources.cpu.cpus", .. }), "{bad}");
        }
        // The quota wins over the cpuset.
        let both = resources(serde_json::json!({"cpu": {"quota": 100000, "period": 100000, "cpus": "0-3"}}));
        assert_eq!(vm_size(&both, 8).unwrap().vcpus, 1);
    }

    #[test]
    fn the_vcpus_annotation_overrides_and_may_exceed_the_host() {
        let mut spec = resources(serde_json::json!({"cpu": {"quota": 150000, "period": 100000}}));
        spec.set_annotations(Some([(VCPUS_ANNOTATION.to_owned(), "3".to_owned())].into()));
        assert_eq!(vm_size(&spec, 8).unwrap().vcpus, 3);
        assert_eq!(vm_size(&annotated(VCPUS_ANNOTATION, "32"), 2).unwrap().vcpus, 32);
        for bad in ["0", "33", "", "two", "1.5", "-1", "256"] {
            let error = vm_size(&annotated(VCPUS_ANNOTATION, bad), 2).unwrap_err();
            assert!(matches!(&error, SizingError::Annotation { name: VCPUS_ANNOTATION, .. }), "{bad}: {error:?}");
            assert!(error.to_string().starts_with(&format!("annotation husk.vcpus={bad:?}: ")), "{error}");
        }
    }

    #[test]
    fn sizes_become_machine_configs() {
        let config = VmSize { vcpus: 2, mem_mib: 128 }.machine_config();
        assert_eq!((config.vcpu_count, config.mem_size_mib), (2, 128));
        assert_eq!(config.validate(), Ok(()));
    }
}
