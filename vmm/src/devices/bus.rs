//! An address space (port I/O or MMIO) that dispatches vCPU accesses to
//! the device owning the address.

use std::sync::{Arc, Mutex};

/// A device as a vCPU sees it: reads and writes at an offset inside the
/// device's range. `data` is the access, 1 to 8 bytes.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    #[error("empty device range at {0:#x}")]
    Empty(u64),
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Built before the vCPUs start and immutable afterwards, so vCPU threads
/// share it without a lock; each device has its own.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap { base, len })?;
        if self.ranges.iter().any(|r| base < r.base + r.len && r.base < end) {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let index = self.ranges.partition_point(|r| r.base <= addr).checked_sub(1)?;
        let range = &self.ranges[index];
        let offset = addr - range.base;
        (offset < range.len).then_some((range, offset))
    }

    /// Returns false when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((range, offset)) => {
                range.device.lock().expect("device lock poisoned").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((range, offset)) => {
                range.device.lock().expect("device lock poisoned").write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        bus.insert(b.clone(), 0x3f8, 8).unwrap();
        bus.insert(a.clone(), 0x60, 5).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x64, &mut data));
        assert_eq!(data, [4]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(b.lock().unwrap().writes, vec![(1, vec![7])]);
        assert!(!bus.read(0x65, &mut data));
        assert!(!bus.write(0x3f7, &[0]));
        assert!(!bus.write(0, &[0]));
        assert!(!bus.write(u64::MAX, &[0]));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::default();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert_eq!(bus.insert(dev(), 0x10f, 1), Err(BusError::Overlap { base: 0x10f, len: 1 }));
        assert_eq!(bus.insert(dev(), 0xf0, 0x11), Err(BusError::Overlap { base: 0xf0, len: 0x11 }));
        assert_eq!(bus.insert(dev(), 0x200, 0), Err(BusError::Empty(0x200)));
        assert_eq!(bus.insert(dev(), u64::MAX, 2), Err(BusError::Overlap { base: u64::MAX, len: 2 }));
        bus.insert(dev(), 0x110, 1).unwrap();
    }
}
