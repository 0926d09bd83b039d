//! The guest's pseudo file systems, mounted by PID 1 before anything runs.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};

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
