//! The virtio-mmio transport, version 2 (modern only; virtio 1.2 §4.2.2):
//! one register page per device, feature negotiation, queue setup and the
//! device status state machine. Queue notifications arrive as KVM
//! ioeventfds (registered by the VM builder with [`MmioTransport::queue_events`])
//! and never exit to the VMM; a notify that does reach this device is passed
//! on by writing the same eventfd.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivatedQueues, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Each device's register page.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Where QueueNotify is, for the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// A queue as the driver describes it through the registers, before the
/// device gets a `Queue` built from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<QueueRegs>,
    queue_events: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// The device's shared memory region as the guest sees it, if it has
    /// one.
    shm: Option<ShmLayout>,
    shm_sel: u32,
}

/// Where a device's shared memory region lies in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmLayout {
    /// The region's ID (SHMSel).
    pub id: u8,
    pub guest_base: u64,
    pub len: u64,
}

impl MmioTransport {
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let max_sizes = device.lock().expect("device lock").queue_max_sizes().to_vec();
        let queues = max_sizes.iter().map(|&max_size| QueueRegs { max_size, ..Default::default() }).collect();
        let queue_events =
            max_sizes.iter().map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_events,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            shm: None,
            shm_sel: 0,
        })
    }

    /// One eventfd per queue, for the VM builder to register as KVM
    /// ioeventfds on QueueNotify with the queue index as the datamatch.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Tells the driver where the device's shared memory region is (the VM
    /// builder placed it and made it guest memory).
    pub fn set_shm_region(&mut self, layout: ShmLayout) {
        self.shm = Some(layout);
    }

    /// The selected shared memory region, if it exists.
    fn selected_shm(&self) -> Option<ShmLayout> {
        self.shm.filter(|shm| u32::from(shm.id) == self.shm_sel)
    }

    fn offered_features(&self) -> u64 {
        self.device.lock().expect("device lock").device_features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the queue is not live.
    fn selected_queue_configurable(&mut self) -> Option<&mut QueueRegs> {
        if self.activated || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.selected_queue().filter(|q| !q.ready)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.lock().expect("device lock").device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // A region that does not exist has a length (and base) of all
            // ones.
            REG_SHM_LEN_LOW => self.selected_shm().map_or(u32::MAX, |shm| shm.len as u32),
            REG_SHM_LEN_HIGH => self.selected_shm().map_or(u32::MAX, |shm| (shm.len >> 32) as u32),
            REG_SHM_BASE_LOW => self.selected_shm().map_or(u32::MAX, |shm| shm.guest_base as u32),
            REG_SHM_BASE_HIGH => self.selected_shm().map_or(u32::MAX, |shm| (shm.guest_base >> 32) as u32),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
                    tracing::warn!("virtio-mmio: driver features written outside feature negotiation; ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, value),
                    1 => set_high(&mut self.driver_features, value),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue_configurable() {
                    q.size = value.min(u32::from(u16::MAX)) as u16;
                }
            }
            REG_QUEUE_READY => {
                let configurable = !self.activated && self.status & STATUS_DRIVER_OK == 0;
                if let Some(q) = self.selected_queue().filter(|_| configurable) {
                    q.ready = value == 1;
                }
            }
            REG_QUEUE_DESC_LOW => self.set_queue_address(|q| set_low(&mut q.desc, value)),
            REG_QUEUE_DESC_HIGH => self.set_queue_address(|q| set_high(&mut q.desc, value)),
            REG_QUEUE_DRIVER_LOW => self.set_queue_address(|q| set_low(&mut q.driver, value)),
            REG_QUEUE_DRIVER_HIGH => self.set_queue_address(|q| set_high(&mut q.driver, value)),
            REG_QUEUE_DEVICE_LOW => self.set_queue_address(|q| set_low(&mut q.device, value)),
            REG_QUEUE_DEVICE_HIGH => self.set_queue_address(|q| set_high(&mut q.device, value)),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => self.shm_sel = value,
            // Reached only if the ioeventfd for this queue is missing.
            QUEUE_NOTIFY_OFFSET => {
                if let Some(evt) = self.queue_events.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            _ => tracing::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn set_queue_address(&mut self, set: impl FnOnce(&mut QueueRegs)) {
        if let Some(q) = self.selected_queue_configurable() {
            set(q);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Besides a reset, the driver only ever adds bits.
        if value & self.status != self.status {
            tracing::warn!("virtio-mmio: status {value:#x} clears bits of {:#x}; ignored", self.status);
            return;
        }
        let added = value & !self.status;
        let mut status = value;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let acceptable = self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if acceptable {
                self.device.lock().expect("device lock").ack_features(self.driver_features);
            } else {
                tracing::warn!(
                    "virtio-mmio: driver features {:#x} are not acceptable (offered {offered:#x}, VERSION_1 required)",
                    self.driver_features
                );
                // The driver re-reads the status and gives up on the device.
                status &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if status & STATUS_FEATURES_OK == 0 {
                tracing::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored");
                status &= !STATUS_DRIVER_OK;
            } else if let Err(err) = self.activate() {
                tracing::warn!("virtio-mmio: cannot activate the device: {err}");
                status |= STATUS_DEVICE_NEEDS_RESET;
                self.status = status;
                let _ = self.interrupt.signal_config_change();
                return;
            }
        }
        self.status = status;
    }

    fn activate(&mut self) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, regs) in self.queues.iter().enumerate() {
            if !regs.ready {
                return Err(format!("queue {index} is not ready"));
            }
            let mut queue = Queue::new(regs.max_size).map_err(|e| format!("queue {index}: {e:?}"))?;
            queue.try_set_size(regs.size).map_err(|e| format!("queue {index} size {}: {e:?}", regs.size))?;
            queue.try_set_desc_table_address(GuestAddress(regs.desc)).map_err(|e| format!("queue {index}: {e:?}"))?;
            queue.try_set_avail_ring_address(GuestAddress(regs.driver)).map_err(|e| format!("queue {index}: {e:?}"))?;
            queue.try_set_used_ring_address(GuestAddress(regs.device)).map_err(|e| format!("queue {index}: {e:?}"))?;
            queue.set_ready(true);
            if !queue.is_valid(&*self.mem) {
                return Err(format!("queue {index} does not lie in guest memory"));
            }
            queues.push(queue);
        }
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cloning queue eventfds: {e}"))?;
        let activated =
            ActivatedQueues { mem: self.mem.clone(), queues, queue_events, interrupt: self.interrupt.clone() };
        self.device.lock().expect("device lock").activate(activated).map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.lock().expect("device lock").reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs { max_size: q.max_size, ..Default::default() };
        }
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.lock().expect("device lock").read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match data.len() {
            4 => data.copy_from_slice(&self.read_register(offset).to_le_bytes()),
            _ => {
                tracing::debug!("virtio-mmio: {}-byte register read at {offset:#x}", data.len());
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.lock().expect("device lock").write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) => self.write_register(offset, u32::from_le_bytes(bytes)),
            Err(_) => tracing::debug!("virtio-mmio: {}-byte register write at {offset:#x} ignored", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;

    /// A device that records what the transport does to it.
    #[derive(Default)]
    struct Recorder {
        acked: Option<u64>,
        activated_queues: Option<Vec<u16>>,
        resets: usize,
        config: [u8; 8],
        refuse_activation: bool,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn device_features(&self) -> u64 {
            1 << 5
        }
        fn ack_features(&mut self, features: u64) {
            self.acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, queues: ActivatedQueues) -> Result<(), ActivateError> {
            if self.refuse_activation {
                return Err(ActivateError::Backend("refused".into()));
            }
            self.activated_queues = Some(queues.queues.iter().map(|q| q.size()).collect());
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_queues = None;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Recorder>>) {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let device = Arc::new(Mutex::new(Recorder { config: *b"\x03\0\0\0\0\0\0\0", ..Default::default() }));
        let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(mem, device.clone(), interrupt).unwrap(), device)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The Linux driver's sequence up to DRIVER_OK.
    fn bring_up(t: &mut MmioTransport, features: u64) {
        write(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        write(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(t, REG_DRIVER_FEATURES_SEL, 0);
        write(t, REG_DRIVER_FEATURES, features as u32);
        write(t, REG_DRIVER_FEATURES_SEL, 1);
        write(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        write(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for (index, base) in [(0u32, 0x1000u64), (1, 0x4000)] {
            write(t, REG_QUEUE_SEL, index);
            write(t, REG_QUEUE_NUM, 64);
            write(t, REG_QUEUE_DESC_LOW, base as u32);
            write(t, REG_QUEUE_DRIVER_LOW, (base + 0x400) as u32);
            write(t, REG_QUEUE_DEVICE_LOW, (base + 0x800) as u32);
            write(t, REG_QUEUE_READY, 1);
        }
        let status = read(t, REG_STATUS);
        write(t, REG_STATUS, status | STATUS_DRIVER_OK);
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(read(&mut t, REG_VERSION), 2);
        assert_eq!(read(&mut t, REG_DEVICE_ID), 19);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is offered");
        write(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1 << 5);
        write(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 256);
        write(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 0, "no such queue");
        let mut cid = [0u8; 8];
        t.read(CONFIG_SPACE_OFFSET, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        assert_eq!(read(&mut t, REG_SHM_LEN_LOW), u32::MAX, "no shared memory region");
    }

    #[test]
    fn a_shared_memory_region_is_reported_only_for_its_id() {
        let (mut t, _) = transport();
        t.set_shm_region(ShmLayout { id: 0, guest_base: 0x1_4000_0000, len: 0x1_2000_0000 });
        write(&mut t, REG_SHM_SEL, 0);
        assert_eq!(read(&mut t, REG_SHM_LEN_LOW), 0x2000_0000);
        assert_eq!(read(&mut t, REG_SHM_LEN_HIGH), 1);
        assert_eq!(read(&mut t, REG_SHM_BASE_LOW), 0x4000_0000);
        assert_eq!(read(&mut t, REG_SHM_BASE_HIGH), 1);
        for id in [1, 2, 255, u32::MAX] {
            write(&mut t, REG_SHM_SEL, id);
            for reg in [REG_SHM_LEN_LOW, REG_SHM_LEN_HIGH, REG_SHM_BASE_LOW, REG_SHM_BASE_HIGH] {
                assert_eq!(read(&mut t, reg), u32::MAX, "region {id} does not exist");
            }
        }
        // A reset selects region 0 again.
        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_SHM_LEN_HIGH), 1);
    }

    #[test]
    fn negotiation_and_activation_hand_the_queues_over() {
        let (mut t, device) = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        let device = device.lock().unwrap();
        assert_eq!(device.acked, Some(VIRTIO_F_VERSION_1 | 1 << 5));
        assert_eq!(device.activated_queues, Some(vec![64, 64]));
    }

    #[test]
    fn a_legacy_driver_or_unoffered_features_fail_negotiation() {
        for features in [1 << 5, VIRTIO_F_VERSION_1 | 1 << 6] {
            let (mut t, device) = transport();
            bring_up(&mut t, features);
            assert_eq!(read(&mut t, REG_STATUS) & (STATUS_FEATURES_OK | STATUS_DRIVER_OK), 0, "{features:#x}");
            assert_eq!(device.lock().unwrap().activated_queues, None);
        }
    }

    #[test]
    fn bad_queues_mark_the_device_as_needing_reset() {
        let (mut t, device) = transport();
        write(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        write(&mut t, REG_DRIVER_FEATURES, 1);
        write(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        // Queue 0: a size that is not a power of two; queue 1 outside memory.
        write(&mut t, REG_QUEUE_SEL, 0);
        write(&mut t, REG_QUEUE_NUM, 3);
        write(&mut t, REG_QUEUE_READY, 1);
        write(&mut t, REG_QUEUE_SEL, 1);
        write(&mut t, REG_QUEUE_NUM, 64);
        write(&mut t, REG_QUEUE_DESC_HIGH, 0xffff);
        write(&mut t, REG_QUEUE_READY, 1);
        write(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let status = read(&mut t, REG_STATUS);
        assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(device.lock().unwrap().activated_queues, None);
        assert_ne!(read(&mut t, REG_INTERRUPT_STATUS) & super::super::INTERRUPT_CONFIG_CHANGE, 0);
    }

    #[test]
    fn reset_returns_everything_to_the_start_and_resets_the_device() {
        let (mut t, device) = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_STATUS), 0);
        write(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(device.lock().unwrap().resets, 1);
        // And it can be brought up again.
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        assert_eq!(device.lock().unwrap().activated_queues, Some(vec![64, 64]));
    }

    #[test]
    fn queues_cannot_be_moved_while_live_and_odd_accesses_are_ignored() {
        let (mut t, device) = transport();
        device.lock().unwrap().refuse_activation = false;
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, REG_QUEUE_SEL, 0);
        write(&mut t, REG_QUEUE_DESC_LOW, 0xdead_0000);
        write(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 1);
        // Clearing status bits without a reset is refused.
        write(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_ne!(read(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        // 1- and 2-byte register accesses do nothing and read as zero.
        t.write(REG_STATUS, &[0]);
        let mut narrow = [0xffu8; 2];
        t.read(REG_MAGIC, &mut narrow);
        assert_eq!(narrow, [0, 0]);
        assert_ne!(read(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn activation_refused_by_the_device_needs_reset() {
        let (mut t, device) = transport();
        device.lock().unwrap().refuse_activation = true;
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        assert_ne!(read(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    }
}
