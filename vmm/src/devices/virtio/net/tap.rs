//! The host end of a virtio-net device: an existing TAP device, opened
//! through `/dev/net/tun` in non-blocking mode with a virtio-net header in
//! front of every frame (IFF_VNET_HDR), so checksum and segmentation
//! offload information passes between the guest and the host stack as is.
//!
//! The TAP device belongs to the user: husk attaches a queue to it and
//! detaches when the file is closed, and never creates, configures or
//! deletes it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name the kernel accepts (IFNAMSIZ with its NUL).
pub const MAX_TAP_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP device name {name:?} is {len} bytes long; Linux allows at most {MAX_TAP_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("TAP device name {0:?} is not a valid interface name")]
    InvalidName(String),
    #[error("TAP device {0:?} does not exist; create it first (e.g. `ip tuntap add {0} mode tap`)")]
    Missing(String),
    #[error("TAP device {0:?} disappeared while it was being opened")]
    Vanished(String),
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("{0:?} is not a TAP device")]
    NotTap(String),
    #[error("TAP device {0:?} is already in use (a single-queue TAP accepts one user)")]
    Busy(String),
    #[error("TAP device {0:?} is a multi-queue TAP whose queues were opened without IFF_VNET_HDR")]
    NoVnetHeader(String),
    #[error("TAP device {name:?}: {what}: {source}")]
    Ioctl { name: String, what: &'static str, source: io::Error },
}

/// An open queue of a TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn interface_index(name: &CString) -> Option<u32> {
    // SAFETY: `name` is a valid NUL-terminated string; the call reads only it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

pub(super) fn ifreq_with_flags(name: &str, flags: libc::c_int) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (integers, arrays and a union of
    // them and pointers); all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    request
}

impl Tap {
    /// Attaches to the existing TAP device `name` with a `vnet_hdr_len`-byte
    /// virtio-net header on every frame.
    pub fn open(name: &str, vnet_hdr_len: usize) -> Result<Tap, TapError> {
        if name.len() > MAX_TAP_NAME_LEN {
            return Err(TapError::NameTooLong { name: name.to_string(), len: name.len() });
        }
        if name.is_empty() || name.bytes().any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace()) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let c_name = CString::new(name).map_err(|_| TapError::InvalidName(name.to_string()))?;
        // TUNSETIFF creates the device when the name is free; husk must
        // only attach to the user's, so its existence is checked first and
        // its index compared afterwards.
        let index = interface_index(&c_name).ok_or_else(|| TapError::Missing(name.to_string()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let tap = Tap { file, name: name.to_string() };
        let base_flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        // A multi-queue TAP only accepts queues that say so (EINVAL
        // otherwise), as does a single-queue TAP of ones that do not.
        match tap.set_iff(base_flags) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                tap.set_iff(base_flags | libc::IFF_MULTI_QUEUE).map_err(|err| match err.raw_os_error() {
                    Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                    _ => tap.attach_error(err),
                })?
            }
            Err(err) => return Err(tap.attach_error(err)),
        }
        if interface_index(&c_name) != Some(index) {
            // Deleted in between, and TUNSETIFF made a new one, ours, which
            // goes away with `tap`.
            return Err(TapError::Vanished(name.to_string()));
        }
        // IFF_VNET_HDR is the device's, not the queue's: a multi-queue TAP
        // keeps the flags its first queue set.
        if tap.iff_flags()? & libc::IFF_VNET_HDR == 0 {
            return Err(TapError::NoVnetHeader(name.to_string()));
        }
        let hdr_len = vnet_hdr_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer,
        // which points to a live local.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        Ok(tap)
    }

    /// A stand-in over `file`, which must keep frame boundaries (see
    /// `Net::with_backend`); its offload ioctls fail, which the device
    /// logs and carries on without.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_file(file: File, name: &str) -> Tap {
        Tap { file, name: name.to_string() }
    }

    fn set_iff(&self, flags: libc::c_int) -> io::Result<()> {
        let mut request = ifreq_with_flags(&self.name, flags);
        // SAFETY: TUNSETIFF reads and writes one ifreq through the pointer,
        // which points to a live local of that type.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn iff_flags(&self) -> Result<libc::c_int, TapError> {
        let mut request = ifreq_with_flags("", 0);
        // SAFETY: TUNGETIFF writes one ifreq through the pointer, which
        // points to a live local of that type.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut request) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNGETIFF", io::Error::last_os_error()));
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        Ok(libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags }) & 0xffff)
    }

    fn attach_error(&self, err: io::Error) -> TapError {
        match err.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy(self.name.clone()),
            _ => self.ioctl_error("attaching (TUNSETIFF)", err),
        }
    }

    fn ioctl_error(&self, what: &'static str, source: io::Error) -> TapError {
        TapError::Ioctl { name: self.name.clone(), what, source }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads (`TUN_F_*`) the TAP may use in the frames it hands
    /// over: partially checksummed frames and large segments, which only a
    /// guest that negotiated them can take.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let ret = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }

    /// Writes one frame (header included) gathered from `iovecs`.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory readable for its whole length for
    /// the duration of the call.
    pub unsafe fn writev(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovecs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller guarantees the iovecs describe readable
        // memory; the kernel only reads through them.
        let ret = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_before_touching_the_kernel() {
        let long = "a".repeat(MAX_TAP_NAME_LEN + 1);
        let err = Tap::open(&long, 12).unwrap_err();
        assert!(matches!(err, TapError::NameTooLong { len: 16, .. }), "{err}");
        assert!(err.to_string().contains(&long));
        for bad in ["", "a/b", "a b", "a\0b"] {
            assert!(matches!(Tap::open(bad, 12), Err(TapError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_tap_is_not_created() {
        let name = format!("hskmiss{}", std::process::id() % 100_000);
        let err = Tap::open(&name, 12).unwrap_err();
        assert!(matches!(err, TapError::Missing(_)), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
        assert_eq!(interface_index(&CString::new(name).unwrap()), None);
    }

    #[test]
    fn a_device_that_is_not_a_tap_is_refused() {
        let err = Tap::open("lo", 12).unwrap_err();
        assert!(matches!(err, TapError::NotTap(_)), "{err}");
    }
}
