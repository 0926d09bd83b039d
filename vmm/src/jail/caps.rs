//! Capabilities after the jail is set up: the bounding set and the
//! effective, permitted and inheritable sets cut down to [`KEPT`], no
//! ambient capabilities, an optional uid/gid switch that keeps them, and
//! no_new_privs.

use std::io;

use super::JailError;

/// Capability numbers (linux/capability.h); libc does not define them.
pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_FOWNER: u32 = 3;
pub const CAP_FSETID: u32 = 4;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETFCAP: u32 = 31;

/// What the VMM still needs once set up: virtio-fs's passthrough acts on
/// the guest's behalf on files of any owner. It switches the thread's
/// fsuid/fsgid to the guest's caller for creations (SETUID, SETGID), and
/// changes ownership (CHOWN), modes and times of files it does not own
/// (FOWNER, DAC_OVERRIDE), keeps setgid bits across chown/chmod (FSETID)
/// and writes `security.capability` xattrs from images (SETFCAP).
///
/// Left out on purpose: NET_ADMIN (the TAP is attached as its owner, see
/// the runtime's network set-up), SYS_ADMIN (mounts happen before the
/// drop), SYS_RESOURCE (rlimits are set before), MKNOD (device nodes are
/// refused on shares; FIFOs and sockets need no capability),
/// DAC_READ_SEARCH (only file-handle reopening needs it, which husk does
/// not use), SYS_PTRACE, KILL, and everything else.
pub const KEPT: &[u32] = &[CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETGID, CAP_SETUID, CAP_SETFCAP];

/// [`KEPT`] as the 64-bit mask /proc/PID/status shows.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, cap| mask | 1 << cap)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability outside [`KEPT`] from the bounding set (needs
/// CAP_SETPCAP, so before the sets are cut) and clears the ambient set.
fn cut_bounding_set() -> Result<(), JailError> {
    let keep = kept_mask();
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ takes a capability number and reads
        // nothing from memory.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if present < 0 {
            // EINVAL: past the last capability this kernel knows.
            break;
        }
        if present == 1 && keep & (1 << cap) == 0 {
            // SAFETY: as above; it changes only this thread's bounding set.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) })
                .map_err(|source| JailError::Bounding { cap, source })?;
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL reads nothing from memory.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })
        .map_err(JailError::Ambient)
}

/// Switches to `uid`/`gid` (no supplementary groups) without touching the
/// capability sets: SECBIT_NO_SETUID_FIXUP (locked) keeps the kernel from
/// clearing them on this change and on every later one. virtio-fs depends
/// on that: it switches a thread's euid to the guest caller's and back, and
/// without the bit a return from euid 0 to the jail's uid would clear the
/// effective set for good.
fn switch_ids(uid: u32, gid: u32) -> Result<(), JailError> {
    let bits = libc::SECBIT_NO_SETUID_FIXUP | libc::SECBIT_NO_SETUID_FIXUP_LOCKED;
    // SAFETY: PR_SET_SECUREBITS reads nothing from memory; it needs
    // CAP_SETPCAP, which the process still has.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) })
        .map_err(JailError::Securebits)?;
    // SAFETY: setgroups with a count of 0 reads no list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(JailError::Setgroups)?;
    // SAFETY: plain id switches; glibc applies them to every thread (there
    // is only one yet).
    check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(|source| JailError::Setresgid { gid, source })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map_err(|source| JailError::Setresuid { uid, source })
}

/// Effective and permitted become [`KEPT`], inheritable empty: nothing
/// the VMM could exec would inherit a capability.
fn set_capabilities() -> Result<(), JailError> {
    let mask = kept_mask();
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        CapData { effective: mask as u32, permitted: mask as u32, inheritable: 0 },
        CapData { effective: (mask >> 32) as u32, permitted: (mask >> 32) as u32, inheritable: 0 },
    ];
    // SAFETY: capset reads a version 3 header and two data structs, both
    // live locals laid out as linux/capability.h's.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    check(ret as libc::c_int).map_err(JailError::Capset)
}

/// The whole drop, in the order the kernel needs.
pub(super) fn drop_privileges(ids: Option<(u32, u32)>) -> Result<(), JailError> {
    cut_bounding_set()?;
    if let Some((uid, gid)) = ids {
        switch_ids(uid, gid)?;
    }
    set_capabilities()?;
    // SAFETY: PR_SET_NO_NEW_PRIVS reads nothing from memory.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map_err(JailError::NoNewPrivs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_mask_has_exactly_the_kept_bits() {
        assert_eq!(kept_mask(), 0x8000_00db);
        assert_eq!(kept_mask().count_ones() as usize, KEPT.len());
    }
}
