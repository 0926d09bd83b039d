//! The guest's pseudo file systems, mounted by PID 1 before anything runs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::AgentError;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// In mount order: a target's parent is mounted before it.
const MOUNTS: &[Mount] = &[
    Mount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID | NODEV | NOEXEC, data: "" },
    Mount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID | NODEV | NOEXEC, data: "" },
    Mount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: NOSUID, data: "mode=0755" },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=1777" },
    Mount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=1777" },
    Mount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=0755" },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: "nsdelegate",
    },
];

/// The /dev links programs expect and devtmpfs does not create.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

pub fn mount_all() -> Result<(), AgentError> {
    for m in MOUNTS {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(m.target)
            .map_err(|source| AgentError::CreatePath { path: m.target, source })?;
        mount(m).map_err(|source| AgentError::Mount { fstype: m.fstype, target: m.target, source })?;
    }
    for (to, link) in DEV_LINKS {
        match symlink(to, link) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                return Err(AgentError::CreatePath { path: link, source: err });
            }
            _ => {}
        }
    }
    Ok(())
}

fn mount(m: &Mount) -> io::Result<()> {
    let cstr = |s: &str| CString::new(s).expect("mount table strings have no NUL");
    let (source, target, fstype, data) = (cstr(m.source), cstr(m.target), cstr(m.fstype), cstr(m.data));
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), m.flags, data.as_ptr().cast()) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
    if err.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(err)
}

/// Set in the agent's environment once it runs from its own tmpfs root.
const ROOT_MOVED_ENV: &str = "HUSK_AGENT_ROOT_MOVED";

/// Where the new root is assembled before it is moved over `/`.
const NEW_ROOT: &str = "/.husk-root";

/// Moves the agent out of the initramfs root into a tmpfs, then re-executes
/// it there (still PID 1).
///
/// pivot_root(2) refuses to leave the initial rootfs (it has no parent
/// mount), and every container's setup pivots its mount namespace into the
/// container's root. Rather than fall back to chroot for containers, the
/// agent does once what switch_root does at boot: copy the initramfs's few
/// files into a tmpfs, move that over `/` and chroot into it. Each file is
/// unlinked from the initramfs once copied, so the move costs no memory.
pub fn leave_initramfs() -> Result<(), AgentError> {
    if std::env::var_os(ROOT_MOVED_ENV).is_some() {
        return Ok(());
    }
    let fail = |source| AgentError::CreatePath { path: NEW_ROOT, source };
    std::fs::DirBuilder::new().mode(0o755).create(NEW_ROOT).map_err(fail)?;
    mount(&Mount { source: "tmpfs", target: NEW_ROOT, fstype: "tmpfs", flags: 0, data: "mode=0755" }).map_err(fail)?;
    move_tree(Path::new("/"), Path::new(NEW_ROOT)).map_err(fail)?;
    let dot = CString::new(".").expect("no NUL");
    let root = CString::new("/").expect("no NUL");
    std::env::set_current_dir(NEW_ROOT).map_err(fail)?;
    // SAFETY: valid C strings; MS_MOVE takes no file system type or data.
    if unsafe { libc::mount(dot.as_ptr(), root.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: valid C string.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(fail)?;
    let err = std::process::Command::new("/init").args(std::env::args_os().skip(1)).env(ROOT_MOVED_ENV, "1").exec();
    Err(fail(err))
}

/// Copies `from`'s entries into `to` (directories, regular files, symlinks
/// and device nodes, with their modes) and unlinks the copied files.
fn move_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        if source == Path::new(NEW_ROOT) {
            continue;
        }
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::DirBuilder::new().mode(meta.mode() & 0o7777).create(&target)?;
            move_tree(&source, &target)?;
            continue;
        }
        if kind.is_symlink() {
            symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
        } else {
            let path = CString::new(target.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: path is a valid C string; mode and rdev come from the
            // node being copied.
            if unsafe { libc::mknod(path.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        std::fs::remove_file(&source)?;
    }
    Ok(())
}

/// The kernel opens /dev/console for init only if the initramfs has that
/// node; if it did not, attach stdio to the console now that devtmpfs is up.
pub fn ensure_console_stdio() -> Result<(), AgentError> {
    // SAFETY: F_GETFD on a possibly-closed fd only reports EBADF.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } != -1 {
        return Ok(());
    }
    let path = CString::new("/dev/console").expect("no NUL");
    // SAFETY: path is a valid C string; the returned fd is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(AgentError::Console(io::Error::last_os_error()));
    }
    for target in 0..=2 {
        // SAFETY: fd is open; dup2 onto the standard descriptors replaces them.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(AgentError::Console(io::Error::last_os_error()));
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer needed after dup2.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The mount options of a virtio-fs share: `dax=always` maps every file
/// through the DAX window instead of the page cache.
pub fn virtiofs_options(request: &crate::cmdline::MountRequest) -> &'static str {
    if request.dax {
        "dax=always"
    } else {
        ""
    }
}

/// Mounts the virtio-fs share `tag` on `path` (created if missing).
pub fn mount_virtiofs(request: &crate::cmdline::MountRequest) -> Result<(), AgentError> {
    let err = |source| AgentError::MountShare { tag: request.tag.clone(), path: request.path.clone(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&request.path).map_err(err)?;
    let cstr = |s: &str| CString::new(s).map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)));
    let (tag, path, fstype) = (cstr(&request.tag)?, cstr(&request.path)?, cstr("virtiofs")?);
    let data = cstr(virtiofs_options(request))?;
    let flags = if request.read_only { libc::MS_RDONLY } else { 0 } | libc::MS_NODEV;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(tag.as_ptr(), path.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::MountRequest;

    #[test]
    fn dax_shares_mount_with_dax_always() {
        let request = MountRequest { tag: "t".into(), path: "/p".into(), read_only: true, dax: false };
        assert_eq!(virtiofs_options(&request), "");
        assert_eq!(virtiofs_options(&MountRequest { dax: true, ..request }), "dax=always");
    }
}
