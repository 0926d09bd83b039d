//! A container's cgroup v2 directory in the guest: counters for `Stats` and
//! OOM reports, new limits for `Update`, and killing everything in it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use husk_api::agent_protocol::ContainerStats;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use super::spec::CGROUP_PARENT;

/// Where the agent mounts the cgroup2 hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub fn path(container_id: &str) -> PathBuf {
    container_path(Path::new(CGROUP_ROOT), container_id)
}

fn parent_path(root: &Path) -> PathBuf {
    root.join(CGROUP_PARENT.trim_start_matches('/'))
}

fn container_path(root: &Path, container_id: &str) -> PathBuf {
    parent_path(root).join(container_id)
}

pub fn read(container_id: &str, file: &str) -> io::Result<String> {
    std::fs::read_to_string(path(container_id).join(file))
}

/// `key value` lines (memory.events, cpu.stat) as a lookup.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `max` or a number.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The number of OOM kills in the container's cgroup so far (0 when the
/// memory controller or the cgroup is missing).
pub fn oom_kills(container_id: &str) -> u64 {
    read(container_id, "memory.events").ok().and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0)
}

pub fn stats(container_id: &str) -> io::Result<ContainerStats> {
    let cpu = read(container_id, "cpu.stat")?;
    let number = |file: &str| -> io::Result<u64> {
        read(container_id, file)?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, file.to_owned()))
    };
    Ok(ContainerStats {
        memory_current_bytes: number("memory.current")?,
        memory_max_bytes: limit(&read(container_id, "memory.max")?),
        memory_oom_kills: oom_kills(container_id),
        cpu_usage_us: keyed(&cpu, "usage_usec").unwrap_or(0),
        cpu_user_us: keyed(&cpu, "user_usec").unwrap_or(0),
        cpu_system_us: keyed(&cpu, "system_usec").unwrap_or(0),
        pids_current: number("pids.current")?,
        pids_max: limit(&read(container_id, "pids.max")?),
    })
}

/// How long a freeze may take: the kernel stops each task at its next
/// return to user space, which a task stuck in an uninterruptible wait
/// (a slow virtio-fs request) postpones.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes cgroup.freeze and waits for cgroup.events to show the state.
pub fn freeze(container_id: &str, frozen: bool) -> io::Result<()> {
    let dir = path(container_id);
    let want = if frozen { "1" } else { "0" };
    std::fs::write(dir.join("cgroup.freeze"), want)?;
    let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
    loop {
        let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
        if events.lines().any(|line| line.split_whitespace().eq(["frozen", want])) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("cgroup.events still says {events:?}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sends `signal` to every process in the container's cgroup.
pub fn signal_all(container_id: &str, signal: i32) -> io::Result<()> {
    if signal == libc::SIGKILL && std::fs::write(path(container_id).join("cgroup.kill"), "1").is_ok() {
        return Ok(());
    }
    for pid in read(container_id, "cgroup.procs")?.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill with a pid and signal; a process that is already gone
        // (ESRCH) is not an error here.
        unsafe { libc::kill(pid, signal) };
    }
    Ok(())
}

/// A value of an update's resources that no cgroup file can take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("{field} is {value}: only -1 (unlimited), 0 (unchanged) or a positive number of bytes is valid")]
    BadBytes { field: &'static str, value: i64 },
    #[error("memory.swap ({swap}) counts memory plus swap, so it needs a memory limit, and the container has none")]
    SwapWithoutLimit { swap: i64 },
    #[error("memory.swap ({swap}) counts memory plus swap, so it cannot be below the memory limit ({limit})")]
    SwapBelowLimit { swap: i64, limit: i64 },
}

/// Why an update's writes did not all reach the cgroup.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("reading {}: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("enabling the {controller} controller in {}: {source}", file.display())]
    Enable { controller: &'static str, file: PathBuf, source: io::Error },
    #[error("writing {value:?} to {file}: {source}")]
    Write { file: &'static str, value: String, source: io::Error },
}

/// The cgroup v2 files, and their values, that carry the limits set in
/// `resources`, converted as runc converts them; fields that are unset (or
/// 0, runc's "unset" for numbers) produce no write. `current` reads one of
/// the container's cgroup files: an update that sets only half of a pair
/// (the CPU period without the quota, the swap without the memory limit)
/// keeps the other half's current value.
pub fn resource_writes(
    resources: &LinuxResources,
    current: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, ResourceError> {
    let mut writes = Vec::new();
    if let Some(memory) = resources.memory() {
        memory_writes(memory, &current, &mut writes)?;
    }
    if let Some(cpu) = resources.cpu() {
        cpu_writes(cpu, &current, &mut writes);
    }
    if let Some(pids) = resources.pids() {
        // The runtime spec has no "unset" here: 0 and below mean no limit.
        let limit = pids.limit();
        writes.push(("pids.max", if limit > 0 { limit.to_string() } else { "max".to_owned() }));
    }
    Ok(writes)
}

/// A byte count as runc writes it: None for 0 (unset), `max` for -1.
fn bytes(field: &'static str, value: Option<i64>) -> Result<Option<String>, ResourceError> {
    match value.unwrap_or(0) {
        0 => Ok(None),
        -1 => Ok(Some("max".to_owned())),
        value if value < 0 => Err(ResourceError::BadBytes { field, value }),
        value => Ok(Some(value.to_string())),
    }
}

fn memory_writes(
    memory: &LinuxMemory,
    current: impl Fn(&str) -> Option<String>,
    writes: &mut Vec<(&'static str, String)>,
) -> Result<(), ResourceError> {
    let limit = memory.limit().unwrap_or(0);
    let swap = memory.swap().unwrap_or(0);
    if let Some(value) = bytes("memory.limit", memory.limit())? {
        writes.push(("memory.max", value));
    }
    if let Some(value) = bytes("memory.reservation", memory.reservation())? {
        writes.push(("memory.low", value));
    }
    // OCI's swap is memory plus swap (cgroup v1's memsw); v2 limits swap
    // alone. As runc: unlimited memory without a swap value lifts the swap
    // limit too.
    let swap_max = match (swap, limit) {
        (0, -1) | (-1, _) => Some("max".to_owned()),
        (0, _) => None,
        (swap, _) if swap < 0 => return Err(ResourceError::BadBytes { field: "memory.swap", value: swap }),
        (swap, limit) => {
            let limit = match limit {
                0 => current("memory.max")
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or(ResourceError::SwapWithoutLimit { swap })?,
                -1 => return Err(ResourceError::SwapWithoutLimit { swap }),
                limit => limit,
            };
            if swap < limit {
                return Err(ResourceError::SwapBelowLimit { swap, limit });
            }
            Some((swap - limit).to_string())
        }
    };
    if let Some(value) = swap_max {
        writes.push(("memory.swap.max", value));
    }
    Ok(())
}

fn cpu_writes(cpu: &LinuxCpu, current: impl Fn(&str) -> Option<String>, writes: &mut Vec<(&'static str, String)>) {
    if let Some(shares) = cpu.shares().filter(|shares| *shares != 0) {
        writes.push(("cpu.weight", shares_to_weight(shares).to_string()));
    }
    let period = cpu.period().filter(|period| *period != 0);
    if cpu.quota().is_some() || period.is_some() {
        let quota = match cpu.quota() {
            Some(quota) if quota > 0 => quota.to_string(),
            Some(_) => "max".to_owned(),
            // The kernel takes cpu.max as "QUOTA [PERIOD]": a new period
            // alone must repeat the current quota, or it would lift it.
            None => current("cpu.max")
                .and_then(|text| text.split_whitespace().next().map(str::to_owned))
                .unwrap_or_else(|| "max".to_owned()),
        };
        writes.push(("cpu.max", period.map_or(quota.clone(), |period| format!("{quota} {period}"))));
    }
    if let Some(burst) = cpu.burst() {
        writes.push(("cpu.max.burst", burst.to_string()));
    }
    if let Some(idle) = cpu.idle() {
        writes.push(("cpu.idle", idle.to_string()));
    }
    for (file, value) in [("cpuset.cpus", cpu.cpus()), ("cpuset.mems", cpu.mems())] {
        if let Some(value) = value.as_ref().filter(|value| !value.is_empty()) {
            writes.push((file, value.clone()));
        }
    }
}

/// cgroup v1's cpu.shares (2–262144, default 1024) on v2's cpu.weight
/// (1–10000, default 100), runc's linear conversion.
fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// The fields of `resources` that an update sets but that have no cgroup v2
/// file the agent writes (device rules, block I/O, hugepages, …), by their
/// OCI names.
pub fn ignored_resources(resources: &LinuxResources) -> Vec<&'static str> {
    let mut ignored = Vec::new();
    let mut note = |set: bool, name| {
        if set {
            ignored.push(name);
        }
    };
    note(resources.devices().as_ref().is_some_and(|d| !d.is_empty()), "devices");
    note(resources.block_io().is_some(), "blockIO");
    note(resources.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()), "hugepageLimits");
    note(resources.network().is_some(), "network");
    note(resources.rdma().as_ref().is_some_and(|r| !r.is_empty()), "rdma");
    note(resources.unified().as_ref().is_some_and(|u| !u.is_empty()), "unified");
    if let Some(memory) = resources.memory() {
        note(memory.kernel().is_some(), "memory.kernel");
        note(memory.kernel_tcp().is_some(), "memory.kernelTCP");
        note(memory.swappiness().is_some(), "memory.swappiness");
        note(memory.disable_oom_killer().is_some(), "memory.disableOOMKiller");
    }
    if let Some(cpu) = resources.cpu() {
        note(cpu.realtime_runtime().is_some(), "cpu.realtimeRuntime");
        note(cpu.realtime_period().is_some(), "cpu.realtimePeriod");
    }
    ignored
}

/// Files an update may find missing: `memory.swap.max` exists only in a
/// kernel with swap (the guest's has none, so there is nothing to limit),
/// the cpuset files only where the cpuset controller is.
fn optional(file: &str) -> bool {
    matches!(file, "memory.swap.max" | "cpuset.cpus" | "cpuset.mems")
}

/// Writes `writes` (from [`resource_writes`]) to the container's cgroup.
pub fn apply(container_id: &str, writes: &[(&'static str, String)]) -> Result<(), UpdateError> {
    apply_at(Path::new(CGROUP_ROOT), container_id, writes)
}

fn apply_at(root: &Path, container_id: &str, writes: &[(&'static str, String)]) -> Result<(), UpdateError> {
    let dir = container_path(root, container_id);
    let mut controllers: Vec<&'static str> =
        writes.iter().filter_map(|(file, _)| file.split_once('.').map(|(controller, _)| controller)).collect();
    controllers.sort_unstable();
    controllers.dedup();
    enable_controllers(root, &dir, &controllers)?;
    for (file, value) in writes {
        // Not std::fs::write: O_CREAT would turn a missing file into a
        // misleading EACCES from kernfs.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(file))
            .and_then(|mut handle| handle.write_all(value.as_bytes()));
        match written {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound && optional(file) => {}
            Err(source) => return Err(UpdateError::Write { file, value: value.clone(), source }),
        }
    }
    Ok(())
}

/// Makes `controllers` available in the container's cgroup. libcontainer
/// enables every controller the root offers when it creates the cgroup,
/// best effort; whatever it missed is enabled here, down the path from the
/// root (the husk parent holds no processes, so it may delegate).
fn enable_controllers(root: &Path, dir: &Path, controllers: &[&'static str]) -> Result<(), UpdateError> {
    let available_file = dir.join("cgroup.controllers");
    let available = std::fs::read_to_string(&available_file)
        .map_err(|source| UpdateError::Read { file: available_file, source })?;
    for controller in controllers {
        if available.split_whitespace().any(|c| c == *controller) {
            continue;
        }
        for parent in [root.to_path_buf(), parent_path(root)] {
            let file = parent.join("cgroup.subtree_control");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|mut handle| handle.write_all(format!("+{controller}").as_bytes()))
                .map_err(|source| UpdateError::Enable { controller, file, source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(3));
        assert_eq!(keyed(events, "missing"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("134217728\n"), Some(134217728));
    }

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    fn writes(json: serde_json::Value) -> Result<Vec<(&'static str, String)>, ResourceError> {
        resource_writes(&resources(json), |_| None)
    }

    fn owned(writes: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        writes.iter().map(|(file, value)| (*file, value.to_string())).collect()
    }

    #[test]
    fn limits_map_to_their_v2_files() {
        let json = serde_json::json!({
            "memory": { "limit": 50331648, "reservation": 16777216, "swap": 67108864 },
            "cpu": { "shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0" },
            "pids": { "limit": 20 },
        });
        assert_eq!(
            writes(json).unwrap(),
            owned(&[
                ("memory.max", "50331648"),
                ("memory.low", "16777216"),
                ("memory.swap.max", "16777216"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("pids.max", "20"),
            ])
        );
    }

    #[test]
    fn unset_fields_write_nothing() {
        assert_eq!(writes(serde_json::json!({})).unwrap(), []);
        let json = serde_json::json!({ "memory": { "limit": 0 }, "cpu": { "shares": 0, "period": 0, "cpus": "" } });
        assert_eq!(writes(json).unwrap(), []);
        assert_eq!(writes(serde_json::json!({ "pids": { "limit": 7 } })).unwrap(), owned(&[("pids.max", "7")]));
    }

    #[test]
    fn unlimited_values_are_max() {
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": -1 }, "pids": { "limit": 0 } })).unwrap(),
            owned(&[("memory.max", "max"), ("memory.swap.max", "max"), ("pids.max", "max")])
        );
        assert_eq!(writes(serde_json::json!({ "pids": { "limit": -1 } })).unwrap(), owned(&[("pids.max", "max")]));
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": 4096, "swap": -1 } })).unwrap(),
            owned(&[("memory.max", "4096"), ("memory.swap.max", "max")])
        );
        assert_eq!(writes(serde_json::json!({ "cpu": { "quota": -1 } })).unwrap(), owned(&[("cpu.max", "max")]));
        assert_eq!(
            writes(serde_json::json!({ "cpu": { "quota": 0, "period": 20000 } })).unwrap(),
            owned(&[("cpu.max", "max 20000")])
        );
    }

    #[test]
    fn swap_is_converted_from_memory_plus_swap() {
        // Equal to the limit: no swap at all.
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": 1000, "swap": 1000 } })).unwrap(),
            owned(&[("memory.max", "1000"), ("memory.swap.max", "0")])
        );
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": 1000, "swap": 999 } })),
            Err(ResourceError::SwapBelowLimit { swap: 999, limit: 1000 })
        );
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": -1, "swap": 2000 } })),
            Err(ResourceError::SwapWithoutLimit { swap: 2000 })
        );
        // Swap alone is relative to the cgroup's current limit.
        let swap_only = resources(serde_json::json!({ "memory": { "swap": 3000 } }));
        assert_eq!(
            resource_writes(&swap_only, |file| (file == "memory.max").then(|| "1000\n".to_owned())).unwrap(),
            owned(&[("memory.swap.max", "2000")])
        );
        assert_eq!(
            resource_writes(&swap_only, |_| Some("max\n".to_owned())),
            Err(ResourceError::SwapWithoutLimit { swap: 3000 })
        );
        assert_eq!(
            writes(serde_json::json!({ "memory": { "limit": -5 } })),
            Err(ResourceError::BadBytes { field: "memory.limit", value: -5 })
        );
    }

    #[test]
    fn a_new_period_keeps_the_current_quota() {
        let period_only = resources(serde_json::json!({ "cpu": { "period": 20000 } }));
        assert_eq!(
            resource_writes(&period_only, |file| (file == "cpu.max").then(|| "50000 100000\n".to_owned())).unwrap(),
            owned(&[("cpu.max", "50000 20000")])
        );
        assert_eq!(resource_writes(&period_only, |_| None).unwrap(), owned(&[("cpu.max", "max 20000")]));
        // A quota alone leaves the kernel's period as it is.
        assert_eq!(writes(serde_json::json!({ "cpu": { "quota": 25000 } })).unwrap(), owned(&[("cpu.max", "25000")]));
    }

    #[test]
    fn shares_convert_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // Out of v1's range: clamped, not wrapped.
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1 << 40), 10_000);
    }

    #[test]
    fn fields_without_a_v2_file_are_reported() {
        let json = serde_json::json!({
            "devices": [{ "allow": false, "access": "rwm" }],
            "blockIO": { "weight": 100 },
            "memory": { "limit": 4096, "swappiness": 0 },
            "cpu": { "shares": 512, "realtimeRuntime": 950000 },
            "unified": {},
        });
        let resources = resources(json);
        assert_eq!(ignored_resources(&resources), ["devices", "blockIO", "memory.swappiness", "cpu.realtimeRuntime"]);
        assert!(ignored_resources(&LinuxResources::default()).is_empty());
    }

    /// A fake cgroup tree in a scratch directory.
    struct FakeTree(PathBuf);

    impl FakeTree {
        fn new(name: &str, controllers: &str) -> Self {
            let root = std::env::temp_dir().join(format!("husk-cgroup-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let dir = container_path(&root, "c1");
            std::fs::create_dir_all(&dir).unwrap();
            for file in [root.join("cgroup.subtree_control"), parent_path(&root).join("cgroup.subtree_control")] {
                std::fs::write(file, "").unwrap();
            }
            std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
            for file in ["memory.max", "pids.max", "cpu.max"] {
                std::fs::write(dir.join(file), "").unwrap();
            }
            Self(root)
        }

        fn read(&self, file: &str) -> String {
            std::fs::read_to_string(container_path(&self.0, "c1").join(file)).unwrap()
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn apply_writes_each_file_and_skips_a_missing_swap_file() {
        let tree = FakeTree::new("apply", "cpuset cpu io memory pids\n");
        let writes = owned(&[("memory.max", "4096"), ("memory.swap.max", "0"), ("pids.max", "20")]);
        apply_at(&tree.0, "c1", &writes).unwrap();
        assert_eq!((tree.read("memory.max"), tree.read("pids.max")), ("4096".into(), "20".into()));
        assert!(!container_path(&tree.0, "c1").join("memory.swap.max").exists(), "created a cgroup file");
        // Nothing was missing, so nothing was enabled.
        assert_eq!(std::fs::read_to_string(tree.0.join("cgroup.subtree_control")).unwrap(), "");
    }

    #[test]
    fn apply_enables_a_missing_controller_down_the_path() {
        let tree = FakeTree::new("enable", "memory\n");
        apply_at(&tree.0, "c1", &owned(&[("pids.max", "20"), ("memory.max", "max")])).unwrap();
        for dir in [tree.0.clone(), parent_path(&tree.0)] {
            assert_eq!(std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(), "+pids");
        }
        assert_eq!(tree.read("pids.max"), "20");
    }

    #[test]
    fn apply_names_the_file_that_failed() {
        let tree = FakeTree::new("fail", "cpu memory pids\n");
        let err = apply_at(&tree.0, "c1", &owned(&[("cpu.weight", "39")])).unwrap_err();
        assert!(matches!(&err, UpdateError::Write { file: "cpu.weight", .. }), "{err:?}");
        assert!(err.to_string().contains("cpu.weight") && err.to_string().contains("os error 2"), "{err}");
        let err = apply_at(&tree.0, "gone", &owned(&[("pids.max", "1")])).unwrap_err();
        assert!(matches!(err, UpdateError::Read { .. }), "{err:?}");
    }
}
