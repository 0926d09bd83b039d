//! A container's record under the runtime's `--root`: one directory per
//! container holding its state, its VM's sockets and logs, and the lock
//! that serialises commands on it.
//!
//! ```text
//! <root>/<id>/state.json   what `create` recorded (written under the lock)
//! <root>/<id>/exit.json    the init's exit, written by its monitor
//! <root>/<id>/vmm.sock     husk-vmm's API socket
//! <root>/<id>/vsock.sock   the hybrid vsock socket the agent is reached on
//!                          (a symlink to jail/vsock.sock when jailed)
//! <root>/<id>/vmm.log      husk-vmm's log; console.log the guest console
//! <root>/<id>/volumes/N    bind mounts of the spec's volume sources
//! <root>/<id>/jail/        husk-vmm's root (see monitor.rs): mount points
//!                          only, on the host; the mounts are in the VMM's
//!                          own namespace and go with it
//! ```
//!
//! The status is derived, not stored: a recorded exit or a monitor that is
//! gone means `stopped`, whatever the last phase said, so a `kill -9` of the
//! VMM or of the monitor shows as `stopped` and `delete` cleans it up.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use husk_api::agent_protocol::ExitStatus;
use serde::{Deserialize, Serialize};

/// The runc default is /run/runc; ours sits beside it.
pub const DEFAULT_ROOT: &str = "/run/husk";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{path} is not a husk container record: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { what, path, source }
}

/// The lifecycle phase `create`, `start`, `pause` and `resume` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Created,
    Running,
    Paused,
}

/// The status runc reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Creating => "creating",
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

/// A host process, named by pid and start time so that a recycled pid is
/// not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    pub start_time: u64,
}

impl HostProcess {
    pub fn of(pid: i32) -> Option<Self> {
        process_start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// The process exists, is the one recorded, and has not exited (a
    /// zombie waiting for its parent counts as gone).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        let Some((state, start)) = parse_stat(&stat) else { return false };
        start == self.start_time && state != 'Z' && state != 'X'
    }
}

/// (state, start time) from a /proc/<pid>/stat line; the command name may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// A volume bind-mounted under the container's `volumes/` directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedVolume {
    pub source: PathBuf,
    pub staged: PathBuf,
}

/// Everything `create` recorded about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub bundle: PathBuf,
    /// RFC 3339, as runc's state has it.
    pub created: String,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub phase: Phase,
    /// The process whose pid went to `--pid-file`: it lives as long as the
    /// container's init and exits with its status.
    pub monitor: HostProcess,
    #[serde(flatten)]
    pub vm: VmRecord,
}

/// What the monitor made for a container's VM: it reports this to
/// `create`, which records it as part of [`ContainerRecord`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmRecord {
    pub vmm: HostProcess,
    pub rootfs: PathBuf,
    /// The container's network namespace (from the spec) and the TAP made
    /// in it, if the VM has a NIC.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub tap: Option<String>,
    /// The host cgroup the VMM and monitor were put in.
    #[serde(default)]
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub volumes: Vec<StagedVolume>,
    pub vcpus: u8,
    pub mem_mib: u32,
}

/// How the init's monitor saw it end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitStatus,
    /// Set when the VM itself died (its VMM killed or crashed) rather than
    /// the container's init exiting.
    #[serde(default)]
    pub vm_lost: Option<String>,
}

/// The directory of one container under `root`.
#[derive(Clone, Debug)]
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
}

impl ContainerDir {
    pub fn new(root: &Path, id: &str) -> Result<Self, StateError> {
        husk_api::agent_protocol::validate_id(id)
            .map_err(|err| StateError::InvalidId { id: id.to_owned(), reason: err.to_string() })?;
        Ok(Self { id: id.to_owned(), path: root.join(id) })
    }

    pub fn exists(&self) -> bool {
        self.path.join("state.json").exists()
    }

    /// Makes the directory of a new container and takes its lock. The
    /// directory is the claim: a second `create` of the same id fails here.
    pub fn create(&self) -> Result<Lock, StateError> {
        let root = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(root).map_err(io_error("creating the runtime root", root))?;
        match std::fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Err(StateError::Exists(self.id.clone())),
            Err(err) => return Err(io_error("creating", &self.path)(err)),
        }
        self.lock()
    }

    /// Takes the container's lock (blocking), so commands on one container
    /// run one at a time. Fails if the container was deleted meanwhile.
    pub fn lock(&self) -> Result<Lock, StateError> {
        let dir = File::open(&self.path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => StateError::NotFound(self.id.clone()),
            _ => io_error("opening", &self.path)(err),
        })?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("locking", &self.path)(err));
            }
        }
        // A delete that held the lock before us removed the directory.
        if !self.path.exists() {
            return Err(StateError::NotFound(self.id.clone()));
        }
        Ok(Lock { _dir: dir })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn load(&self) -> Result<ContainerRecord, StateError> {
        let path = self.file("state.json");
        let text = std::fs::read(&path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => StateError::NotFound(self.id.clone()),
            _ => io_error("reading", &path)(err),
        })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        write_atomically(&self.file("state.json"), &serde_json::to_vec_pretty(record).expect("serialisable"))
    }

    pub fn exit(&self) -> Option<ExitRecord> {
        let text = std::fs::read(self.file("exit.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save_exit(&self, exit: &ExitRecord) -> Result<(), StateError> {
        write_atomically(&self.file("exit.json"), &serde_json::to_vec(exit).expect("serialisable"))
    }

    pub fn status(&self, record: &ContainerRecord) -> Status {
        if self.exit().is_some() || !record.monitor.is_alive() {
            return Status::Stopped;
        }
        match record.phase {
            Phase::Created => Status::Created,
            Phase::Running => Status::Running,
            Phase::Paused => Status::Paused,
        }
    }

    /// Removes the directory and everything in it (the lock goes with it).
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error("removing", &self.path)(err)),
        }
    }
}

/// Held while a command works on a container.
pub struct Lock {
    _dir: File,
}

/// Containers under `root`, by id.
pub fn list(root: &Path) -> Result<Vec<ContainerDir>, StateError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(err) => return Err(io_error("listing", root)(err)),
    };
    let mut dirs: Vec<ContainerDir> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|id| ContainerDir::new(root, id).ok()))
        .filter(ContainerDir::exists)
        .collect();
    dirs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(dirs)
}

/// runc's `state` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The monitor's pid: the host process that stands for the init.
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub owner: String,
}

impl OciState {
    pub fn of(record: &ContainerRecord, status: Status) -> Self {
        Self {
            oci_version: "1.0.2".into(),
            id: record.id.clone(),
            status,
            // runc reports 0 once the init is gone.
            pid: if status == Status::Stopped { 0 } else { record.monitor.pid },
            bundle: record.bundle.clone(),
            rootfs: record.vm.rootfs.clone(),
            created: record.created.clone(),
            annotations: record.annotations.clone(),
            owner: String::new(),
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_error("creating", &tmp))?;
    file.write_all(bytes).map_err(io_error("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("renaming into place", path))
}

/// Now, as RFC 3339 UTC with nanoseconds (runc's `created`).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(!HostProcess { start_time: me.start_time + 1, ..me }.is_alive());
    }

    #[test]
    fn create_claims_the_id_once_and_lock_fails_after_removal() {
        let root = std::env::temp_dir().join(format!("husk-state-test-{}", std::process::id()));
        let dir = ContainerDir::new(&root, "c1").unwrap();
        let lock = dir.create().unwrap();
        assert!(matches!(dir.create(), Err(StateError::Exists(_))));
        drop(lock);
        dir.remove().unwrap();
        assert!(matches!(dir.lock(), Err(StateError::NotFound(_))));
        assert!(matches!(ContainerDir::new(&root, "../x"), Err(StateError::InvalidId { .. })));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
