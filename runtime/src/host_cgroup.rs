//! Placing the host processes of a container (its VMM and their monitor)
//! in the cgroup its bundle names (`linux.cgroupsPath`), and removing that
//! cgroup when the container is deleted.
//!
//! Engines expect the runtime's processes in that cgroup: podman and
//! containerd read the container's CPU and memory use from it, and find
//! and kill its processes through it. husk writes no limits there: the
//! microVM's size is the container's limit (see [`crate::sizing`]), and
//! the spec's limits are applied inside the guest. Only placement is done
//! here.
//!
//! Both host layouts are supported:
//! - cgroup v2 (unified: `/sys/fs/cgroup/cgroup.controllers` exists): the
//!   cgroup is `/sys/fs/cgroup/<path>`;
//! - cgroup v1 or hybrid: the cgroup is `<path>` in every hierarchy mounted
//!   under `/sys/fs/cgroup`, as `/proc/self/mountinfo` lists them: each v1
//!   controller's, named ones such as `name=systemd`, and in hybrid mode the
//!   unified hierarchy (which has no controllers there; being in it only
//!   makes the placement consistent for tools that read it).
//!
//! The forms of `cgroupsPath` (see [`relative_path`]):
//! - `/a/b`: cgroupfs, from the root of each hierarchy;
//! - `a/b`: also from the root. runc puts a relative path under its own
//!   cgroup instead, but the runtime is a short-lived command whose own
//!   cgroup (that of whatever ran it) is no meaningful parent, and the
//!   engines pass absolute paths anyway (podman `/libpod_parent/libpod-<id>`,
//!   containerd `/<namespace>/<id>`);
//! - `slice:prefix:name`: systemd's form. husk does not ask systemd for a
//!   scope; the path is where systemd would put one, as runc computes it:
//!   `/<slice expanded>/<prefix>-<name>.scope`, the slice expanded as
//!   systemd nests slices (`machine-libpod.slice` is
//!   `/machine.slice/machine-libpod.slice`), `system.slice` when empty;
//! - empty: `/<container id>`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the host's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The mount table [`place`] reads the v1 hierarchies from.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The file whose presence at the root means cgroup v2 only (unified).
const UNIFIED_MARKER: &str = "cgroup.controllers";

/// Attempts of an `rmdir` that fails with `EBUSY`: the kernel takes an
/// exited task out of its cgroups asynchronously, so a cgroup whose last
/// process was just reaped can still be busy for a moment.
const RMDIR_ATTEMPTS: u32 = 5;
const RMDIR_FIRST_DELAY: Duration = Duration::from_millis(10);

/// Why host processes could not be placed in, or their cgroup removed
/// from, the container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("container {container_id}: invalid cgroupsPath {cgroups_path:?}: {reason}")]
    InvalidPath { container_id: String, cgroups_path: String, reason: String },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("no cgroup hierarchy is mounted under {} (the mount table lists no cgroup file system there)", root.display())]
    NoHierarchy { root: PathBuf },
    #[error("creating the cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    /// A new v1 cpuset cgroup starts with no CPUs or memory nodes, and no
    /// process can join it until it is given its parent's.
    #[error("giving the new cpuset cgroup {} its parent's {file}: {source}", path.display())]
    Cpuset { path: PathBuf, file: &'static str, source: io::Error },
    #[error("moving pid {pid} into the cgroup {}: {source}", path.display())]
    Move { path: PathBuf, pid: libc::pid_t, source: io::Error },
    #[error("removing the cgroup {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Processes placed in a container's cgroup: the cgroup's directory in
/// every hierarchy, and which of them [`place`] created.
///
/// It serializes, so that the command that deletes the container (another
/// process than the one that created it) can remove the cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "the cgroup stays behind unless removed"]
pub struct PlacedCgroup {
    /// The cgroup's directory in each hierarchy.
    paths: Vec<PathBuf>,
    /// Those of `paths` that did not exist before: the ones to remove.
    created: Vec<PathBuf>,
}

impl PlacedCgroup {
    /// The cgroup's directory in each hierarchy.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the cgroup's directories that [`place`] created, once the
    /// processes in them have exited. Directories that existed before (an
    /// engine's) are left, and so are the parents created for the cgroup,
    /// which other containers share (`/libpod_parent`), as runc leaves
    /// them. A directory already gone counts as removed, so that a delete
    /// can be retried.
    ///
    /// Tries every directory; the error is the first failure.
    pub fn remove(self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for path in self.created {
            if let Err(source) = rmdir_retrying(&path) {
                first_error.get_or_insert(CgroupError::Remove { path, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Puts `pids` in the container's cgroup (`cgroups_path`, the bundle's
/// `linux.cgroupsPath`; `container_id` names it when that is empty) on this
/// host, creating it where needed. See the module's documentation for the
/// layouts and forms handled.
pub fn place(cgroups_path: &str, container_id: &str, pids: &[libc::pid_t]) -> Result<PlacedCgroup, CgroupError> {
    let mountinfo =
        fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read { path: PathBuf::from(MOUNTINFO), source })?;
    place_under(Path::new(CGROUP_ROOT), &mountinfo, cgroups_path, container_id, pids)
}

/// [`place`] with the cgroup root and the mount table given: the
/// hierarchies are the cgroup mounts under `root` in `mountinfo` (the text
/// of a `/proc/<pid>/mountinfo`), or `root` itself when it is a unified
/// (v2) hierarchy.
///
/// Every directory is created first, then every pid moved, so that a
/// failure to create leaves nothing behind (what was created is removed).
/// A failure to move a pid removes what it can, but a process already
/// moved keeps its cgroup busy: the error then leaves that cgroup behind.
pub fn place_under(
    root: &Path,
    mountinfo: &str,
    cgroups_path: &str,
    container_id: &str,
    pids: &[libc::pid_t],
) -> Result<PlacedCgroup, CgroupError> {
    let relative = relative_path(cgroups_path, container_id)?;
    let hierarchies = hierarchies(root, mountinfo);
    if hierarchies.is_empty() {
        return Err(CgroupError::NoHierarchy { root: root.to_path_buf() });
    }

    // Every directory created, parents first, for the undoing of a failure.
    let mut created_dirs = Vec::new();
    let mut placed = PlacedCgroup { paths: Vec::new(), created: Vec::new() };
    for hierarchy in &hierarchies {
        match create_cgroup(hierarchy, &relative, &mut created_dirs) {
            Ok((path, created)) => {
                if created {
                    placed.created.push(path.clone());
                }
                placed.paths.push(path);
            }
            Err(error) => {
                undo(&created_dirs);
                return Err(error);
            }
        }
    }
    for path in &placed.paths {
        if let Err(error) = enter(path, pids) {
            undo(&created_dirs);
            return Err(error);
        }
    }
    Ok(placed)
}

/// Removes the container's cgroup (`cgroups_path` as given to [`place`]) in
/// every hierarchy, once its processes have exited: for a command that
/// has no [`PlacedCgroup`], such as a `delete` in another process than the
/// `create`. Unlike [`PlacedCgroup::remove`] it cannot know who created
/// the cgroup, and removes it as runc's delete does; its parents stay. A
/// cgroup already gone counts as removed.
///
/// Tries every hierarchy; the error is the first failure.
pub fn remove(cgroups_path: &str, container_id: &str) -> Result<(), CgroupError> {
    let mountinfo =
        fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read { path: PathBuf::from(MOUNTINFO), source })?;
    remove_under(Path::new(CGROUP_ROOT), &mountinfo, cgroups_path, container_id)
}

/// [`remove`] with the cgroup root and the mount table given, as
/// [`place_under`].
pub fn remove_under(root: &Path, mountinfo: &str, cgroups_path: &str, container_id: &str) -> Result<(), CgroupError> {
    let relative = relative_path(cgroups_path, container_id)?;
    let mut first_error = None;
    for hierarchy in hierarchies(root, mountinfo) {
        let path = hierarchy.mountpoint.join(&relative);
        if let Err(source) = rmdir_retrying(&path) {
            first_error.get_or_insert(CgroupError::Remove { path, source });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The path of the container's cgroup relative to a hierarchy's root, from
/// `cgroupsPath` in any of its forms (see the module's documentation).
/// Refuses paths that leave the hierarchy (`..`) or name its root.
pub fn relative_path(cgroups_path: &str, container_id: &str) -> Result<PathBuf, CgroupError> {
    let invalid = |reason: String| CgroupError::InvalidPath {
        container_id: container_id.to_owned(),
        cgroups_path: cgroups_path.to_owned(),
        reason,
    };
    let cgroupfs_path = if cgroups_path.is_empty() {
        if container_id.is_empty() || container_id.contains('/') || container_id == "." || container_id == ".." {
            return Err(invalid(format!(
                "the path is empty and the container id {container_id:?} cannot be a cgroup's name instead"
            )));
        }
        format!("/{container_id}")
    } else if !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2 {
        systemd_path(cgroups_path).map_err(invalid)?
    } else {
        cgroups_path.to_owned()
    };

    let mut relative = PathBuf::new();
    for component in Path::new(&cgroupfs_path).components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("`..` would leave the cgroup hierarchy".into()))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(invalid("it names the root cgroup, which is not a container's".into()));
    }
    Ok(relative)
}

/// `slice:prefix:name` as the cgroupfs path systemd would give the scope.
fn systemd_path(cgroups_path: &str) -> Result<String, String> {
    let mut parts = cgroups_path.splitn(3, ':');
    let (slice, prefix, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if name.is_empty() {
        return Err("the systemd form slice:prefix:name needs a name".into());
    }
    if prefix.contains('/') || name.contains('/') {
        return Err("the prefix and name of slice:prefix:name cannot contain `/`".into());
    }
    let slice = expand_slice(if slice.is_empty() { "system.slice" } else { slice })?;
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{}/{unit}", slice.trim_end_matches('/')))
}

/// A systemd slice's cgroup path: each `-` nests a slice in the one named
/// by what precedes it (`a-b.slice` is `/a.slice/a-b.slice`); `-.slice` is
/// the root. systemd's and runc's rules.
fn expand_slice(slice: &str) -> Result<String, String> {
    let invalid = || format!("{slice:?} is not a systemd slice name");
    let name = slice.strip_suffix(".slice").ok_or_else(invalid)?;
    if name.is_empty() || slice.contains('/') {
        return Err(invalid());
    }
    if name == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        // `a--b.slice` and `-a.slice` are not valid slice names.
        if component.is_empty() {
            return Err(invalid());
        }
        path.push_str(&format!("/{prefix}{component}.slice"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// A cgroup hierarchy's mount.
#[derive(Debug, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    /// A v1 hierarchy with the cpuset controller, whose new cgroups must be
    /// given CPUs and memory nodes before a process can join them.
    cpuset: bool,
}

/// The hierarchies to place processes in: `root` itself on a unified
/// host, else every cgroup mount under `root`. A hierarchy mounted twice
/// (same device) counts once, at its first mount.
fn hierarchies(root: &Path, mountinfo: &str) -> Vec<Hierarchy> {
    if root.join(UNIFIED_MARKER).exists() {
        return vec![Hierarchy { mountpoint: root.to_path_buf(), cpuset: false }];
    }
    let mut devices: Vec<&str> = Vec::new();
    let mut hierarchies = Vec::new();
    for mount in mountinfo.lines().filter_map(parse_mount) {
        if (mount.fstype != "cgroup" && mount.fstype != "cgroup2")
            || !mount.mountpoint.starts_with(root)
            || devices.contains(&mount.device)
        {
            continue;
        }
        devices.push(mount.device);
        let cpuset = mount.fstype == "cgroup" && mount.super_options.split(',').any(|option| option == "cpuset");
        hierarchies.push(Hierarchy { mountpoint: mount.mountpoint, cpuset });
    }
    hierarchies
}

/// What [`hierarchies`] needs of a mountinfo line.
struct Mount<'a> {
    device: &'a str,
    mountpoint: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// Parses `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`
/// (proc(5)); None for a line not of that shape.
fn parse_mount(line: &str) -> Option<Mount<'_>> {
    let fields: Vec<&str> = line.split(' ').collect();
    // The optional fields end with a lone `-`, after the sixth field.
    let separator = fields.iter().skip(6).position(|&field| field == "-")? + 6;
    Some(Mount {
        device: fields.get(2)?,
        mountpoint: PathBuf::from(OsString::from_vec(unescape_octal(fields.get(4)?))),
        fstype: fields.get(separator + 1)?,
        super_options: fields.get(separator + 3)?,
    })
}

/// Undoes mountinfo's escaping: space, tab, newline and backslash are
/// written as `\ooo`.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], digits) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Creates `relative` in the hierarchy, parents included; records each
/// directory it creates in `created_dirs`. Returns the cgroup's directory
/// and whether it was created.
fn create_cgroup(
    hierarchy: &Hierarchy,
    relative: &Path,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<(PathBuf, bool), CgroupError> {
    let mut dir = hierarchy.mountpoint.clone();
    let mut created = false;
    for component in relative.components() {
        let parent = dir.clone();
        dir.push(component);
        created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        };
        if created {
            created_dirs.push(dir.clone());
            if hierarchy.cpuset {
                inherit_cpuset(&parent, &dir)?;
            }
        }
    }
    Ok((dir, created))
}

/// Gives a new v1 cpuset cgroup its parent's CPUs and memory nodes, as the
/// kernel does itself only with `cgroup.clone_children` set. These are not
/// limits husk chooses: the cgroup is as wide as its parent.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let error = |source| CgroupError::Cpuset { path: dir.to_path_buf(), file, source };
        match fs::read_to_string(dir.join(file)) {
            Ok(value) if !value.trim().is_empty() => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(error(source)),
        }
        let inherited = match fs::read_to_string(parent.join(file)) {
            Ok(value) => value,
            // Mounted with `noprefix` (files named `cpus`, `mems`): an old
            // layout nothing uses any more; moving a pid in fails clearly.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(error(source)),
        };
        fs::write(dir.join(file), inherited).map_err(error)?;
    }
    Ok(())
}

/// Moves `pids` into the cgroup at `dir`, one write each: `cgroup.procs`
/// takes one pid per write.
fn enter(dir: &Path, pids: &[libc::pid_t]) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    // The file exists in every cgroup; `create` matters only to a plain
    // directory standing in for one (the tests').
    let mut file = OpenOptions::new().append(true).create(true).open(&procs).map_err(|source| CgroupError::Move {
        path: dir.to_path_buf(),
        pid: pids.first().copied().unwrap_or(0),
        source,
    })?;
    for &pid in pids {
        file.write_all(format!("{pid}\n").as_bytes()).map_err(|source| CgroupError::Move {
            path: dir.to_path_buf(),
            pid,
            source,
        })?;
    }
    Ok(())
}

/// Removes the directories a failed placement created, deepest first. A
/// failure leaves a directory behind; the placement's error is the one to
/// report.
fn undo(created_dirs: &[PathBuf]) {
    for dir in created_dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}

fn rmdir_retrying(path: &Path) -> io::Result<()> {
    let mut delay = RMDIR_FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < RMDIR_ATTEMPTS => {
                thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    fn temp_dir() -> TempDir {
        TempDir::new_with_prefix("/tmp/husk-cgroup-test-").expect("creating a temporary directory")
    }

    fn read(path: impl AsRef<Path>) -> String {
        fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("reading {}: {e}", path.as_ref().display()))
    }

    fn relative(cgroups_path: &str) -> Result<String, String> {
        relative_path(cgroups_path, "c1").map(|p| p.display().to_string()).map_err(|e| e.to_string())
    }

    #[test]
    fn cgroups_paths_in_every_form() {
        assert_eq!(relative("/libpod_parent/libpod-abc").unwrap(), "libpod_parent/libpod-abc");
        assert_eq!(relative("/default/c1").unwrap(), "default/c1");
        assert_eq!(relative("a/b").unwrap(), "a/b");
        assert_eq!(relative("//a/./b/").unwrap(), "a/b");
        assert_eq!(relative("/with:colons:in").unwrap(), "with:colons:in");
        assert_eq!(relative("").unwrap(), "c1");

        assert_eq!(relative("machine.slice:libpod:abc").unwrap(), "machine.slice/libpod-abc.scope");
        assert_eq!(relative("system.slice:docker:abc").unwrap(), "system.slice/docker-abc.scope");
        assert_eq!(
            relative("machine-libpod_pod_1.slice:libpod:abc").unwrap(),
            "machine.slice/machine-libpod_pod_1.slice/libpod-abc.scope"
        );
        assert_eq!(relative("a-b-c.slice:p:n").unwrap(), "a.slice/a-b.slice/a-b-c.slice/p-n.scope");
        assert_eq!(relative(":crio:abc").unwrap(), "system.slice/crio-abc.scope");
        assert_eq!(relative("-.slice::abc").unwrap(), "abc.scope");
        assert_eq!(relative("user.slice:p:x.slice").unwrap(), "user.slice/x.slice");

        for (bad, reason) in [
            ("/a/../b", "`..`"),
            ("../b", "`..`"),
            ("/", "root cgroup"),
            ("/./", "root cgroup"),
            ("machine.slice:libpod:", "needs a name"),
            ("machine:libpod:abc", "not a systemd slice name"),
            ("a--b.slice:p:n", "not a systemd slice name"),
            ("-a.slice:p:n", "not a systemd slice name"),
            (".slice:p:n", "not a systemd slice name"),
            ("a/b.slice:p:n", "not a systemd slice name"),
            ("machine.slice:p:../n", "cannot contain `/`"),
        ] {
            let error = relative(bad).unwrap_err();
            assert!(error.contains(reason), "{bad:?}: {error}");
            assert!(error.starts_with(&format!("container c1: invalid cgroupsPath {bad:?}: ")), "{error}");
        }
        for id in ["", "a/b", ".."] {
            assert!(relative_path("", id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let mount = parse_mount(
            "40 31 0:37 / /sys/fs/cgroup/sys\\040temd rw,relatime shared:9 master:2 - cgroup cgroup rw,name=systemd",
        )
        .unwrap();
        assert_eq!(mount.device, "0:37");
        assert_eq!(mount.mountpoint, Path::new("/sys/fs/cgroup/sys temd"));
        assert_eq!((mount.fstype, mount.super_options), ("cgroup", "rw,name=systemd"));
        assert!(parse_mount("40 31 0:37 / /x rw - cgroup").is_none());
        assert!(parse_mount("garbage").is_none());
        assert_eq!(unescape_octal("a\\134b\\011\\12"), b"a\\b\t\\12");
    }

    #[test]
    fn unified_hosts_use_the_root() {
        let dir = temp_dir();
        let root = dir.as_path();
        fs::write(root.join(UNIFIED_MARKER), "cpu memory pids\n").unwrap();
        // The engine's parent exists already; the container's cgroup not.
        fs::create_dir(root.join("libpod_parent")).unwrap();

        // The mount table is not consulted on a unified host.
        let placed = place_under(root, "garbage\n", "/libpod_parent/libpod-abc", "abc", &[100, 200]).unwrap();
        let leaf = root.join("libpod_parent/libpod-abc");
        assert_eq!(placed.paths(), std::slice::from_ref(&leaf));
        assert_eq!(read(leaf.join("cgroup.procs")), "100\n200\n");

        // The state file's round trip.
        let placed: PlacedCgroup = serde_json::from_str(&serde_json::to_string(&placed).unwrap()).unwrap();
        // The kernel removes a cgroup's files with it; a plain directory
        // has to be emptied first.
        fs::remove_file(leaf.join("cgroup.procs")).unwrap();
        placed.remove().unwrap();
        assert!(!leaf.exists());
        assert!(root.join("libpod_parent").is_dir(), "the parent, shared by containers, stays");

        // A cgroup that existed before is joined, and left on removal.
        fs::create_dir(root.join("existing")).unwrap();
        let placed = place_under(root, "", "existing", "abc", &[300]).unwrap();
        assert_eq!(read(root.join("existing/cgroup.procs")), "300\n");
        placed.remove().unwrap();
        assert!(root.join("existing").is_dir());
    }

    /// A v1 (hybrid) layout under `root`, as this machine's: three
    /// controllers (cpu mounted twice), a named hierarchy, the unified one,
    /// and mounts the placement must ignore.
    fn v1_layout(root: &Path) -> String {
        for dir in ["cpu", "cpu2", "cpuset", "memory", "sys temd", "unified"] {
            fs::create_dir(root.join(dir)).unwrap();
        }
        fs::write(root.join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        let r = root.display();
        format!(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             34 31 0:31 / {r}/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
             35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
             40 31 0:37 / {r}/sys\\040temd rw,relatime - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n\
             42 31 0:29 / {r}/cpu2 rw,relatime - cgroup cgroup rw,cpu\n\
             43 22 0:32 / /elsewhere/memory rw,relatime - cgroup cgroup rw,memory\n\
             44 22 0:40 / /elsewhere/pids rw,relatime - cgroup cgroup rw,pids\n"
        )
    }

    #[test]
    fn v1_hosts_use_every_hierarchy_mounted_under_the_root() {
        let dir = temp_dir();
        let root = dir.as_path();
        let mountinfo = v1_layout(root);

        let placed = place_under(root, &mountinfo, "/default/c1", "c1", &[42]).unwrap();
        let expected: Vec<PathBuf> = ["cpu", "cpuset", "memory", "sys temd", "unified"]
            .iter()
            .map(|h| root.join(h).join("default/c1"))
            .collect();
        assert_eq!(placed.paths(), expected);
        for path in &expected {
            assert_eq!(read(path.join("cgroup.procs")), "42\n", "{}", path.display());
        }
        assert!(!root.join("cpu2/default").exists(), "a second mount of a hierarchy is not used");
        assert!(!Path::new("/elsewhere").exists());
        // New cpuset cgroups get their parent's CPUs and nodes.
        for cgroup in ["cpuset/default", "cpuset/default/c1"] {
            assert_eq!(read(root.join(cgroup).join("cpuset.cpus")), "0-3\n", "{cgroup}");
            assert_eq!(read(root.join(cgroup).join("cpuset.mems")), "0\n", "{cgroup}");
        }
        assert!(!root.join("memory/default/cpuset.cpus").exists(), "only the cpuset hierarchy gets cpuset files");

        for path in &expected {
            fs::remove_file(path.join("cgroup.procs")).unwrap();
        }
        fs::remove_file(root.join("cpuset/default/c1/cpuset.cpus")).unwrap();
        fs::remove_file(root.join("cpuset/default/c1/cpuset.mems")).unwrap();
        placed.clone().remove().unwrap();
        for path in &expected {
            assert!(!path.exists(), "{}", path.display());
            assert!(path.parent().unwrap().is_dir());
        }
        // Removing again (a retried delete) finds nothing to do.
        placed.remove().unwrap();
    }

    #[test]
    fn remove_by_path_removes_the_cgroup_in_every_hierarchy() {
        let dir = temp_dir();
        let root = dir.as_path();
        let mountinfo = v1_layout(root);
        let cgroups = ["cpu", "cpuset", "memory", "sys temd", "unified"].map(|h| root.join(h).join("default/c1"));
        for cgroup in &cgroups {
            fs::create_dir_all(cgroup).unwrap();
        }
        remove_under(root, &mountinfo, "/default/c1", "c1").unwrap();
        for cgroup in &cgroups {
            assert!(!cgroup.exists(), "{}", cgroup.display());
            assert!(cgroup.parent().unwrap().is_dir());
        }
        remove_under(root, &mountinfo, "/default/c1", "c1").unwrap();

        // A cgroup that cannot be removed (a plain directory with a file
        // in it stands for one still in use) is reported; the others are
        // removed all the same.
        for cgroup in &cgroups {
            fs::create_dir_all(cgroup).unwrap();
        }
        fs::write(cgroups[2].join("cgroup.procs"), "42\n").unwrap();
        let error = remove_under(root, &mountinfo, "/default/c1", "c1").unwrap_err();
        assert!(matches!(&error, CgroupError::Remove { path, .. } if path == &cgroups[2]), "{error:?}");
        assert!(!cgroups[0].exists() && !cgroups[4].exists());
        assert!(matches!(remove_under(root, &mountinfo, "/", "c1"), Err(CgroupError::InvalidPath { .. })));
    }

    #[test]
    fn a_failed_placement_leaves_nothing_behind() {
        let dir = temp_dir();
        let root = dir.as_path();
        let mountinfo = v1_layout(root);
        // Plain directories cannot be removed with files in them: keep the
        // new cpuset cgroups empty (as with `noprefix`).
        fs::remove_file(root.join("cpuset/cpuset.cpus")).unwrap();
        fs::remove_file(root.join("cpuset/cpuset.mems")).unwrap();
        // In the named hierarchy `a` is a file: `a/b` cannot be created,
        // after the cpu, cpuset and memory hierarchies' `a/b` were.
        fs::write(root.join("sys temd/a"), "").unwrap();
        let error = place_under(root, &mountinfo, "/a/b", "c1", &[42]).unwrap_err();
        match &error {
            CgroupError::Create { path, .. } => assert_eq!(path, &root.join("sys temd/a/b")),
            other => panic!("expected a creation error, got {other:?}"),
        }
        for hierarchy in ["cpu", "cpuset", "memory", "unified"] {
            assert!(!root.join(hierarchy).join("a").exists(), "{hierarchy}/a was left behind");
        }

        // A cgroup whose cgroup.procs refuses the pid.
        fs::write(root.join(UNIFIED_MARKER), "").unwrap();
        fs::create_dir_all(root.join("x/cgroup.procs")).unwrap();
        let error = place_under(root, "", "/x", "c1", &[42]).unwrap_err();
        assert!(matches!(&error, CgroupError::Move { pid: 42, path, .. } if path == &root.join("x")), "{error:?}");
        assert!(error.to_string().starts_with("moving pid 42 into the cgroup"), "{error}");

        let error = place_under(root, "", "/", "c1", &[42]).unwrap_err();
        assert!(matches!(error, CgroupError::InvalidPath { .. }), "{error:?}");
        fs::remove_file(root.join(UNIFIED_MARKER)).unwrap();
        let error = place_under(root, "31 23 0:28 / / rw - tmpfs tmpfs rw\n", "/x", "c1", &[42]).unwrap_err();
        assert!(matches!(error, CgroupError::NoHierarchy { .. }), "{error:?}");
    }

    /// Kills the child and removes the test's cgroups however the test ends.
    struct Cleanup {
        child: Child,
        dirs: Vec<PathBuf>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in &self.dirs {
                let _ = rmdir_retrying(dir);
            }
        }
    }

    #[test]
    fn places_a_process_in_this_hosts_cgroups() {
        let mountinfo = read(MOUNTINFO);
        let root = Path::new(CGROUP_ROOT);
        let name = format!("husk-cgroup-test-{}", std::process::id());
        let cgroups_path = format!("/{name}/vmm");
        let child = Command::new("sleep").arg("60").spawn().expect("starting sleep");
        let pid = child.id() as libc::pid_t;
        let mut cleanup = Cleanup { child, dirs: Vec::new() };
        for hierarchy in hierarchies(root, &mountinfo) {
            cleanup.dirs.push(hierarchy.mountpoint.join(&name).join("vmm"));
            cleanup.dirs.push(hierarchy.mountpoint.join(&name));
        }
        assert!(!cleanup.dirs.is_empty(), "no cgroup hierarchy under {CGROUP_ROOT} in {MOUNTINFO}");

        let placed = place(&cgroups_path, "c1", &[pid])
            .unwrap_or_else(|e| panic!("{e} (this test needs root and a writable cgroupfs)"));
        let membership = read(format!("/proc/{pid}/cgroup"));
        // One line per hierarchy (`id:controllers:path`), each with the
        // container's path.
        assert_eq!(membership.lines().count(), placed.paths().len(), "{membership}");
        for line in membership.lines() {
            assert_eq!(line.splitn(3, ':').nth(2), Some(cgroups_path.as_str()), "{membership}");
        }

        cleanup.child.kill().unwrap();
        cleanup.child.wait().unwrap();
        // As `delete` does, in another process than the one that placed.
        remove(&cgroups_path, "c1").unwrap();
        for path in placed.paths() {
            assert!(!path.exists(), "{} was not removed", path.display());
        }
        // The placement's own removal then finds them gone.
        placed.remove().unwrap();
    }
}
