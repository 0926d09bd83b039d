//! The DAX window (virtio 1.2 §5.11.6: the device's shared memory region
//! 0): a range of guest-physical memory the guest asks the device to map
//! file ranges into (FUSE_SETUPMAPPING) and out of (FUSE_REMOVEMAPPING), so
//! it reads and writes the host's page cache directly.
//!
//! PassthroughFs opens the file (read-only unless the guest asks for a
//! writable mapping, which a read-only share refuses before) and calls
//! [`DaxWindow::map`] with its descriptor; the window maps the file range
//! over the reservation with `MAP_SHARED | MAP_FIXED`, and unmapping puts
//! the `PROT_NONE` reservation back. Offsets and lengths come from the guest
//! and are checked against the window before anything is mapped.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::devices::virtio::shm::ShmMapping;

/// The shared memory region ID virtio-fs's DAX window has
/// (VIRTIO_FS_SHMCAP_ID_CACHE).
pub const DAX_SHM_ID: u8 = 0;

/// One device's DAX window and what it may map there.
pub struct DaxWindow {
    mapping: Arc<ShmMapping>,
    read_only: bool,
}

impl DaxWindow {
    /// Reserves a window of `size` bytes. On a read-only share, mappings
    /// are read-only and writable ones are refused.
    pub fn new(size: u64, read_only: bool) -> io::Result<Self> {
        Ok(Self { mapping: Arc::new(ShmMapping::reserve(size)?), read_only })
    }

    pub fn mapping(&self) -> &Arc<ShmMapping> {
        &self.mapping
    }

    /// Drops every mapping: a new FUSE session starts with an empty window.
    pub fn clear(&self) -> io::Result<()> {
        self.mapping.unmap_all()
    }
}

impl FsCacheReqHandler for DaxWindow {
    fn map(&mut self, foffset: u64, moffset: u64, len: u64, flags: u64, fd: RawFd) -> io::Result<()> {
        let flags = SetupmappingFlags::from_bits(flags).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = if flags.contains(SetupmappingFlags::WRITE) {
            if self.read_only {
                return Err(io::Error::from_raw_os_error(libc::EROFS));
            }
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        self.mapping.map_file(moffset, len, fd, foffset, prot)
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        // All or nothing: every range is checked before any is unmapped.
        for request in &requests {
            self.mapping.check_range(request.moffset, request.len)?;
        }
        for request in &requests {
            self.mapping.unmap(request.moffset, request.len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::devices::virtio::shm::page_size;

    const MIB: u64 = 1 << 20;

    fn file_of(len: u64) -> (vmm_sys_util::tempdir::TempDir, std::fs::File, Vec<u8>) {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-dax-").unwrap();
        let path = dir.as_path().join("data");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (dir, file, data)
    }

    fn read_window(window: &DaxWindow, offset: u64, len: u64) -> Vec<u8> {
        let host = (window.mapping().host_addr() + offset) as *const u8;
        // SAFETY: callers only read ranges they have just mapped from a file
        // at least that long; they stay mapped for the copy.
        unsafe { std::slice::from_raw_parts(host, len as usize) }.to_vec()
    }

    #[test]
    fn setupmapping_maps_the_file_range_at_the_window_offset() {
        let (_dir, file, data) = file_of(4 * MIB);
        let mut window = DaxWindow::new(8 * MIB, false).unwrap();
        window.map(2 * MIB, 6 * MIB, 2 * MIB, 0, file.as_raw_fd()).unwrap();
        assert_eq!(read_window(&window, 6 * MIB, 2 * MIB), data[2 * MIB as usize..]);
        // A writable mapping writes the file.
        window.map(0, 0, 2 * MIB, SetupmappingFlags::WRITE.bits(), file.as_raw_fd()).unwrap();
        let host = window.mapping().host_addr() as *mut u8;
        // SAFETY: the first 2 MiB of the window are a writable shared
        // mapping of the file, mapped just above.
        unsafe { host.write_volatile(0xab) };
        window.unmap(vec![RemovemappingOne { moffset: 0, len: 2 * MIB }]).unwrap();
        let mut first = [0u8; 1];
        std::os::unix::fs::FileExt::read_at(&file, &mut first, 0).unwrap();
        assert_eq!(first, [0xab]);
    }

    #[test]
    fn a_hostile_guest_cannot_map_outside_the_window() {
        let (_dir, file, _) = file_of(2 * MIB);
        let fd = file.as_raw_fd();
        let mut window = DaxWindow::new(4 * MIB, false).unwrap();
        let page = page_size();
        for (moffset, len) in [
            (4 * MIB, 2 * MIB),
            (2 * MIB + page, 2 * MIB),
            (u64::MAX - MIB + 1, 2 * MIB),
            (0, 0),
            (0, u64::MAX),
            (1, MIB),
        ] {
            assert!(window.map(0, moffset, len, 0, fd).is_err(), "{moffset:#x}+{len:#x}");
            assert!(window.unmap(vec![RemovemappingOne { moffset, len }]).is_err(), "{moffset:#x}+{len:#x}");
        }
        // Unknown flags are refused; so is an unaligned file offset.
        assert!(window.map(0, 0, MIB, 1 << 7, fd).is_err());
        assert!(window.map(1, 0, MIB, 0, fd).is_err());
        // One bad range in a REMOVEMAPPING leaves the others mapped.
        window.map(0, 0, MIB, 0, fd).unwrap();
        let bad = vec![RemovemappingOne { moffset: 0, len: MIB }, RemovemappingOne { moffset: 4 * MIB, len: MIB }];
        assert!(window.unmap(bad).is_err());
        assert_eq!(read_window(&window, 0, 1), [0]);
        window.clear().unwrap();
    }

    #[test]
    fn a_read_only_share_maps_read_only_and_refuses_writable_mappings() {
        let (_dir, file, data) = file_of(2 * MIB);
        let mut window = DaxWindow::new(2 * MIB, true).unwrap();
        let err = window.map(0, 0, 2 * MIB, SetupmappingFlags::WRITE.bits(), file.as_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        window.map(0, 0, 2 * MIB, SetupmappingFlags::READ.bits(), file.as_raw_fd()).unwrap();
        assert_eq!(read_window(&window, 0, 2 * MIB), data);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = format!("{:x}-", window.mapping().host_addr());
        let line = maps.lines().find(|l| l.starts_with(&start)).expect("the window in /proc/self/maps");
        assert!(line.split_whitespace().nth(1).unwrap().starts_with("r-"), "read-only: {line}");
    }
}
