//! The built-in jail, as Firecracker's jailer sets one up but inside
//! husk-vmm itself: a mount namespace whose root is a per-VM directory
//! holding only what the VMM needs, resource limits, and capabilities cut
//! down to what virtio-fs still needs after set-up.
//!
//! [`enter`] must run while the process has one thread: a mount namespace,
//! like the capability sets, belongs to the thread that unshares or sets it
//! (threads started later inherit both). What the jail holds:
//!
//! - the directory itself, bound on itself (the new `/`), remounted
//!   nosuid, nodev and noexec;
//! - each requested bind (`HOST:JAIL[:ro]`), recursive, read-only ones
//!   remounted so; mount points are created in the directory as needed
//!   (empty files or directories, left there: they are only mount points
//!   in the VMM's namespace, which dies with it);
//! - `/dev/kvm`, and `/dev/net/tun` when the host has one, as binds of the
//!   host's nodes: nothing else of `/dev`;
//! - `/proc/self/fd` and `/proc/self/mountinfo`: the VMM's own descriptor
//!   table and mount table, bound from the host's procfs. virtio-fs
//!   reaches inodes through the descriptors' magic links (fuse-backend-rs
//!   opens the directory when a share is made and uses `/proc/self/fd/N`
//!   paths for xattr operations), and fuse-backend-rs opens mountinfo when
//!   a share is made (it reads it only for file handles, which husk does
//!   not use). Nothing else of procfs is visible: no other process, no
//!   `/proc/sys`.
//!
//! Then `pivot_root` into it, the old root detached, every mount made
//! private (the host's later mounts and unmounts no longer reach in), the
//! resource limits set (with `fsize`, SIGXFSZ ignored so that a write past
//! it fails with EFBIG instead of killing the VMM), and the privileges
//! dropped ([`caps`]).
//!
//! Every mount point is reached through descriptors opened with
//! `O_NOFOLLOW` from the jail's root, and mounted on through its
//! `/proc/self/fd` link: a symlink planted in the directory cannot redirect
//! a mount onto the host.

mod caps;
mod config;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use caps::{kept_mask, KEPT};
pub use config::{Bind, JailConfig, Rlimit};

/// The host devices the jail binds in, at the same paths; the first is
/// required.
const KVM: &str = "/dev/kvm";
const TUN: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail directory {path}: {source}")]
    RootMissing { path: PathBuf, source: io::Error },
    #[error("the jail directory {path} is a symlink")]
    RootSymlink { path: PathBuf },
    #[error("the jail directory {path} is not a directory")]
    RootNotDirectory { path: PathBuf },
    #[error("the jail directory {path} is owned by uid {uid}, not root")]
    RootNotRootOwned { path: PathBuf, uid: u32 },
    #[error("the jail directory {path} is writable by group or others (mode {mode:o})")]
    RootWritable { path: PathBuf, mode: u32 },
    #[error("the bind source {path} (for {jail_path} in the jail): {source}")]
    BindSource { path: PathBuf, jail_path: PathBuf, source: io::Error },
    #[error("{path} is missing on the host: {source}")]
    DeviceMissing { path: &'static str, source: io::Error },
    #[error("the jail must be entered while the VMM has one thread; it has {0}")]
    Threaded(usize),
    #[error("counting the VMM's threads in /proc/self/task: {0}")]
    CountThreads(io::Error),
    #[error("unsharing the mount namespace: {0}")]
    Unshare(io::Error),
    #[error("making the host's mounts slaves in the VMM's namespace: {0}")]
    MakeSlave(io::Error),
    #[error("binding the jail directory {path} on itself: {source}")]
    BindRoot { path: PathBuf, source: io::Error },
    #[error("opening the jail directory {path}: {source}")]
    OpenRoot { path: PathBuf, source: io::Error },
    #[error("creating the mount point {jail_path} in the jail: {source}")]
    MountPoint { jail_path: PathBuf, source: io::Error },
    #[error("the mount point {jail_path} in the jail exists as a {found}, not a {wanted}")]
    MountPointType { jail_path: PathBuf, found: &'static str, wanted: &'static str },
    #[error("binding {host} on {jail_path} in the jail: {source}")]
    Bind { host: PathBuf, jail_path: PathBuf, source: io::Error },
    #[error("remounting {jail_path} in the jail {how}: {source}")]
    Remount { jail_path: PathBuf, how: &'static str, source: io::Error },
    #[error("pivot_root into {path}: {source}")]
    PivotRoot { path: PathBuf, source: io::Error },
    #[error("detaching the host's root from the jail: {0}")]
    DetachOldRoot(io::Error),
    #[error("making the jail's mounts private: {0}")]
    MakePrivate(io::Error),
    #[error("setting RLIMIT_{} to {soft}:{hard}: {source}", name.to_ascii_uppercase())]
    Rlimit { name: &'static str, soft: u64, hard: u64, source: io::Error },
    #[error("ignoring SIGXFSZ: {0}")]
    IgnoreSigxfsz(io::Error),
    #[error("dropping capability {cap} from the bounding set: {source}")]
    Bounding { cap: u32, source: io::Error },
    #[error("clearing the ambient capabilities: {0}")]
    Ambient(io::Error),
    #[error("setting securebits NO_SETUID_FIXUP: {0}")]
    Securebits(io::Error),
    #[error("dropping supplementary groups: {0}")]
    Setgroups(io::Error),
    #[error("switching to gid {gid}: {source}")]
    Setresgid { gid: u32, source: io::Error },
    #[error("switching to uid {uid}: {source}")]
    Setresuid { uid: u32, source: io::Error },
    #[error("setting the capability sets: {0}")]
    Capset(io::Error),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(io::Error),
}

impl JailError {
    /// The command line named something unusable (checked before anything
    /// is mounted): a usage error rather than a VMM failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::RootMissing { .. }
                | Self::RootSymlink { .. }
                | Self::RootNotDirectory { .. }
                | Self::RootNotRootOwned { .. }
                | Self::RootWritable { .. }
                | Self::BindSource { .. }
        )
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// mount(2) with paths and no data.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    // SAFETY: the strings are NUL-terminated locals that outlive the call;
    // a null source, file system type and data are allowed for binds,
    // remounts and propagation changes.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// The path through which the kernel reaches exactly the file `fd` is
/// open on, whatever its path has become.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_path_at(dir: &OwnedFd, name: &OsStr, extra: libc::c_int) -> io::Result<OwnedFd> {
    let name = CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: openat on a live directory descriptor with a NUL-terminated
    // name; the result is checked before it is owned.
    let fd = check(unsafe {
        libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra)
    })?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symlink"
    } else if kind.is_file() {
        "file"
    } else {
        "special file"
    }
}

/// The per-mount flags a bind remount must repeat so as not to clear them
/// (a remount sets the whole set).
fn mount_flags_of(path: &Path) -> io::Result<libc::c_ulong> {
    let target = c_path(path)?;
    // SAFETY: statvfs fills the zeroed struct; the path is a local string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(target.as_ptr(), &mut stat) })?;
    let mut flags = 0;
    for (st, ms) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if stat.f_flag & st != 0 {
            flags |= ms;
        }
    }
    Ok(flags)
}

/// Checks the jail directory: it exists, is a directory and no symlink,
/// belongs to root and only root may write it (whoever could write it
/// could plant files in the VMM's root).
fn check_root(path: &Path) -> Result<(), JailError> {
    let metadata =
        std::fs::symlink_metadata(path).map_err(|source| JailError::RootMissing { path: path.to_owned(), source })?;
    if metadata.file_type().is_symlink() {
        return Err(JailError::RootSymlink { path: path.to_owned() });
    }
    if !metadata.is_dir() {
        return Err(JailError::RootNotDirectory { path: path.to_owned() });
    }
    if metadata.uid() != 0 {
        return Err(JailError::RootNotRootOwned { path: path.to_owned(), uid: metadata.uid() });
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(JailError::RootWritable { path: path.to_owned(), mode: metadata.mode() & 0o7777 });
    }
    Ok(())
}

/// A bind to make, its source checked.
struct PlannedBind {
    bind: Bind,
    is_dir: bool,
}

fn plan(config: &JailConfig) -> Result<Vec<PlannedBind>, JailError> {
    let mut planned = Vec::new();
    for bind in &config.binds {
        let metadata = std::fs::metadata(&bind.host).map_err(|source| JailError::BindSource {
            path: bind.host.clone(),
            jail_path: bind.jail.clone(),
            source,
        })?;
        planned.push(PlannedBind { bind: bind.clone(), is_dir: metadata.is_dir() });
    }
    std::fs::metadata(KVM).map_err(|source| JailError::DeviceMissing { path: KVM, source })?;
    planned.push(PlannedBind { bind: config::own_bind(Path::new(KVM), KVM), is_dir: false });
    if Path::new(TUN).exists() {
        planned.push(PlannedBind { bind: config::own_bind(Path::new(TUN), TUN), is_dir: false });
    }
    // SAFETY: getpid has no preconditions.
    let own = PathBuf::from(format!("/proc/{}", unsafe { libc::getpid() }));
    planned.push(PlannedBind { bind: config::own_bind(&own.join("fd"), "/proc/self/fd"), is_dir: true });
    planned.push(PlannedBind { bind: config::own_bind(&own.join("mountinfo"), "/proc/self/mountinfo"), is_dir: false });
    Ok(planned)
}

/// Creates (or finds) the mount point of `bind` under the jail's root,
/// never following a symlink; returns its parent directory and name.
fn mount_point(root: &OwnedFd, bind: &PlannedBind) -> Result<(OwnedFd, PathBuf), JailError> {
    let jail_path = &bind.bind.jail;
    let error = |source| JailError::MountPoint { jail_path: jail_path.clone(), source };
    let components = bind.bind.components();
    let (last, parents) = components.split_last().expect("a jail path has a component");
    let mut dir = open_path_at(root, OsStr::new("."), libc::O_DIRECTORY).map_err(error)?;
    for name in parents {
        dir = make_dir_at(&dir, name).map_err(error)?;
    }
    let name = CString::new(last.as_bytes()).map_err(|_| error(io::ErrorKind::InvalidInput.into()))?;
    let wanted = if bind.is_dir { "directory" } else { "file" };
    // SAFETY: mkdirat/mknodat on a live directory descriptor with a
    // NUL-terminated name; EEXIST is handled below.
    let made = if bind.is_dir {
        unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }
    } else {
        unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFREG | 0o600, 0) }
    };
    if made < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(error(err));
        }
    }
    let point = open_path_at(&dir, OsStr::new(last), 0).map_err(error)?;
    let metadata = File::from(point).metadata().map_err(error)?;
    let found = file_kind(&metadata);
    if found != wanted && !(wanted == "file" && found == "special file") {
        return Err(JailError::MountPointType { jail_path: jail_path.clone(), found, wanted });
    }
    Ok((dir, PathBuf::from(last)))
}

fn make_dir_at(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: mkdirat on a live directory descriptor with a NUL-terminated
    // name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o755) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    // O_DIRECTORY with O_NOFOLLOW: a symlink or a file here is an error.
    open_path_at(dir, OsStr::new(name), libc::O_DIRECTORY)
}

fn bind_one(root: &OwnedFd, planned: &PlannedBind) -> Result<(), JailError> {
    let bind = &planned.bind;
    let (parent, name) = mount_point(root, planned)?;
    let target = open_path_at(&parent, name.as_os_str(), 0)
        .map_err(|source| JailError::MountPoint { jail_path: bind.jail.clone(), source })?;
    mount(Some(&bind.host), &fd_path(&target), libc::MS_BIND | libc::MS_REC).map_err(|source| JailError::Bind {
        host: bind.host.clone(),
        jail_path: bind.jail.clone(),
        source,
    })?;
    if bind.read_only {
        // Opened again: the new mount now covers the mount point.
        let mounted = open_path_at(&parent, name.as_os_str(), 0)
            .map_err(|source| JailError::MountPoint { jail_path: bind.jail.clone(), source })?;
        let remount_error = |source| JailError::Remount { jail_path: bind.jail.clone(), how: "read-only", source };
        let path = fd_path(&mounted);
        let flags = mount_flags_of(&path).map_err(remount_error)?;
        mount(None, &path, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags).map_err(remount_error)?;
    }
    Ok(())
}

/// Sets up the jail described by `config` and enters it. On return the
/// process's root is the jail, its limits set and its privileges dropped.
/// Must be called while the process has a single thread.
pub fn enter(config: &JailConfig) -> Result<(), JailError> {
    let root_path = &config.root;
    check_root(root_path)?;
    let planned = plan(config)?;
    // A thread that exists now would stay in the host's mount namespace
    // with all its capabilities.
    let threads = std::fs::read_dir("/proc/self/task").map_err(JailError::CountThreads)?.count();
    if threads != 1 {
        return Err(JailError::Threaded(threads));
    }

    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(JailError::Unshare)?;
    // Nothing mounted from here on may propagate back to the host.
    mount(None, Path::new("/"), libc::MS_SLAVE | libc::MS_REC).map_err(JailError::MakeSlave)?;
    mount(Some(root_path), root_path, libc::MS_BIND)
        .map_err(|source| JailError::BindRoot { path: root_path.clone(), source })?;
    // Opened after the bind, so that mounts through it land on the bind.
    let root = {
        let c_root = c_path(root_path).map_err(|source| JailError::OpenRoot { path: root_path.clone(), source })?;
        // SAFETY: open of a NUL-terminated path; checked before owned.
        let fd = check(unsafe {
            libc::open(c_root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        })
        .map_err(|source| JailError::OpenRoot { path: root_path.clone(), source })?;
        // SAFETY: a new descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let root_flags = mount_flags_of(&fd_path(&root)).map_err(|source| JailError::Remount {
        jail_path: "/".into(),
        how: "nosuid,nodev,noexec",
        source,
    })?;
    mount(
        None,
        &fd_path(&root),
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | root_flags,
    )
    .map_err(|source| JailError::Remount { jail_path: "/".into(), how: "nosuid,nodev,noexec", source })?;
    for bind in &planned {
        bind_one(&root, bind)?;
    }

    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // and is detached at once; no directory for it is needed in the jail.
    let pivot_error = |source| JailError::PivotRoot { path: root_path.clone(), source };
    // SAFETY: fchdir to a live directory descriptor.
    check(unsafe { libc::fchdir(root.as_raw_fd()) }).map_err(pivot_error)?;
    // SAFETY: pivot_root with two NUL-terminated "." strings.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(pivoted as libc::c_int).map_err(pivot_error)?;
    // SAFETY: umount2 of a NUL-terminated ".".
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }).map_err(JailError::DetachOldRoot)?;
    // SAFETY: chdir to a NUL-terminated "/".
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(pivot_error)?;
    mount(None, Path::new("/"), libc::MS_PRIVATE | libc::MS_REC).map_err(JailError::MakePrivate)?;
    drop(root);

    for limit in &config.rlimits {
        let value = libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard };
        // SAFETY: setrlimit reads the live local.
        check(unsafe { libc::setrlimit(limit.resource, &value) }).map_err(|source| JailError::Rlimit {
            name: limit.name,
            soft: limit.soft,
            hard: limit.hard,
            source,
        })?;
        if limit.resource == libc::RLIMIT_FSIZE {
            // SAFETY: SIG_IGN for SIGXFSZ; no handler code runs.
            if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
                return Err(JailError::IgnoreSigxfsz(io::Error::last_os_error()));
            }
        }
    }
    caps::drop_privileges(config.ids)
}
