//! Virtio shared memory regions (virtio 1.2 §2.10): memory a device and
//! its driver share, which the transport exposes as a range of
//! guest-physical addresses (virtio-mmio's SHMSel/SHMLen/SHMBase).
//!
//! A region's host side is a [`ShmMapping`]: address space reserved with
//! `PROT_NONE` and registered as its own KVM memory slot by the VM builder.
//! The device places mappings into it (virtio-fs maps file ranges for DAX)
//! and removes them by putting the reservation back over them. Every range
//! the device names is checked against the mapping first, so whatever the
//! guest asks for, nothing outside the reservation is ever touched.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// A device's shared memory region, as the transport and the VM builder see
/// it.
#[derive(Clone)]
pub struct ShmRegion {
    /// The region's ID (what the driver writes to SHMSel).
    pub id: u8,
    /// The host memory backing it; the VM builder registers it with KVM and
    /// keeps it alive as long as the VM.
    pub mapping: Arc<ShmMapping>,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// The host's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// A host address range reserved for a shared memory region: `PROT_NONE`,
/// private, anonymous and without swap reservation, so it costs no memory
/// until something is mapped into it. Unmapped when dropped.
#[derive(Debug)]
pub struct ShmMapping {
    /// The start of the reservation (an address, kept as an integer so the
    /// type is `Send` and `Sync` without claims about aliasing: only the
    /// kernel and the guest ever access the memory, never Rust code here).
    addr: usize,
    len: usize,
}

impl ShmMapping {
    /// Reserves `len` bytes (a non-zero multiple of the page size).
    pub fn reserve(len: u64) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(page_size()) {
            return Err(einval());
        }
        let len = usize::try_from(len).map_err(|_| einval())?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; it replaces nothing. The result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr: addr as usize, len })
    }

    /// Where the reservation starts in the VMM's address space.
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    /// Its length in bytes.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// Checks that `offset..offset + len` is a non-empty, page-aligned range
    /// inside the reservation; returns its host address and length.
    pub fn check_range(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        let page = page_size();
        let end = offset.checked_add(len).ok_or_else(einval)?;
        if len == 0 || !offset.is_multiple_of(page) || !len.is_multiple_of(page) || end > self.size() {
            return Err(einval());
        }
        // Both fit: end <= self.len, a usize.
        Ok((self.addr + offset as usize, len as usize))
    }

    /// Maps `len` bytes of the file `fd` from `file_offset` at `offset` in
    /// the reservation, shared (the guest sees the host's page cache, and
    /// its writes reach the file), with protection `prot`.
    pub fn map_file(&self, offset: u64, len: u64, fd: RawFd, file_offset: u64, prot: libc::c_int) -> io::Result<()> {
        let (addr, len) = self.check_range(offset, len)?;
        if !file_offset.is_multiple_of(page_size()) {
            return Err(einval());
        }
        let file_offset = libc::off_t::try_from(file_offset).map_err(|_| einval())?;
        if prot & !(libc::PROT_READ | libc::PROT_WRITE) != 0 {
            return Err(einval());
        }
        // SAFETY: addr..addr + len lies inside this reservation (checked
        // above), which this object owns and nothing in the VMM accesses
        // through Rust references; MAP_FIXED replaces only pages of it. The
        // result is checked.
        let mapped = unsafe {
            libc::mmap(addr as *mut libc::c_void, len, prot, libc::MAP_SHARED | libc::MAP_FIXED, fd, file_offset)
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the reservation back over `offset..offset + len`, dropping
    /// whatever was mapped there.
    pub fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        let (addr, len) = self.check_range(offset, len)?;
        // SAFETY: as in `map_file`: only pages of this reservation are
        // replaced, by the same kind of mapping `reserve` made.
        let mapped = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops every mapping in the reservation.
    pub fn unmap_all(&self) -> io::Result<()> {
        self.unmap(0, self.size())
    }
}

impl Drop for ShmMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `reserve` mapped, owned by this object;
        // the VM that used it as a memory slot is gone (the VM builder keeps
        // the mapping alive longer than the VM fd).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn ranges_outside_the_reservation_are_refused() {
        let page = page_size();
        let shm = ShmMapping::reserve(16 * page).unwrap();
        assert_eq!(shm.size(), 16 * page);
        assert!(shm.check_range(0, 16 * page).is_ok());
        assert!(shm.check_range(15 * page, page).is_ok());
        for (offset, len) in [
            (0, 0),
            (0, 17 * page),
            (16 * page, page),
            (15 * page, 2 * page),
            (1, page),
            (0, page + 1),
            (u64::MAX - page + 1, page),
            (page, u64::MAX - page + 1),
            (u64::MAX, u64::MAX),
        ] {
            let err = shm.check_range(offset, len).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{offset:#x}+{len:#x}");
            assert!(shm.unmap(offset, len).is_err(), "{offset:#x}+{len:#x}");
            assert!(shm.map_file(offset, len, -1, 0, libc::PROT_READ).is_err(), "{offset:#x}+{len:#x}");
        }
        assert!(ShmMapping::reserve(0).is_err());
        assert!(ShmMapping::reserve(page + 1).is_err());
    }

    #[test]
    fn a_mapped_file_is_read_through_the_host_address_and_unmapped_again() {
        let page = page_size();
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-shm-").unwrap();
        let path = dir.as_path().join("data");
        let mut file = std::fs::File::create(&path).unwrap();
        let data: Vec<u8> = (0..3 * page).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let file = std::fs::File::open(&path).unwrap();

        let shm = ShmMapping::reserve(8 * page).unwrap();
        // The file's second and third pages at the window's fifth page.
        shm.map_file(4 * page, 2 * page, file.as_raw_fd(), page, libc::PROT_READ).unwrap();
        let host = (shm.host_addr() + 4 * page) as *const u8;
        // SAFETY: the two pages at `host` were just mapped readable from a
        // file at least that long, and stay mapped until `unmap` below.
        let seen = unsafe { std::slice::from_raw_parts(host, 2 * page as usize) }.to_vec();
        assert_eq!(seen, data[page as usize..3 * page as usize]);
        // A file offset that is not page-aligned is refused.
        assert!(shm.map_file(0, page, file.as_raw_fd(), 1, libc::PROT_READ).is_err());
        // So is anything beyond read and write access.
        assert!(shm.map_file(0, page, file.as_raw_fd(), 0, libc::PROT_READ | libc::PROT_EXEC).is_err());

        shm.unmap(4 * page, 2 * page).unwrap();
        assert!(!mapped_readable(&shm, 4 * page), "unmapped pages are PROT_NONE again");
        shm.map_file(0, page, file.as_raw_fd(), 0, libc::PROT_READ).unwrap();
        assert!(mapped_readable(&shm, 0));
        shm.unmap_all().unwrap();
        assert!(!mapped_readable(&shm, 0));
    }

    /// Whether the page at `offset` is mapped readable, from /proc/self/maps.
    fn mapped_readable(shm: &ShmMapping, offset: u64) -> bool {
        let addr = shm.host_addr() + offset;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { return false };
            let Some((start, end)) = range.split_once('-') else { return false };
            let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
            (start..end).contains(&addr) && perms.starts_with('r')
        })
    }
}
