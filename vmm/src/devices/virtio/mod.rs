//! Virtio devices over the virtio-mmio transport.
//!
//! A device is a plain struct behind [`VirtioDevice`]: the transport
//! ([`mmio::MmioTransport`], on a vCPU thread) negotiates features, sets up
//! the queues and, when the driver sets DRIVER_OK, hands them to the device
//! with [`VirtioDevice::activate`]. Queue processing does not happen on the
//! vCPU thread: every device is also an `event_manager::MutEventSubscriber`
//! on the VMM's event loop. `activate` stores the queues and writes the
//! device's activation eventfd; the subscriber, woken by it, registers the
//! queue notification eventfds (KVM ioeventfds, so a notify never leaves
//! the kernel) and its backend's file descriptors, and processes queues
//! from then on. Interrupts go to the guest through [`VirtioInterrupt`], an
//! irqfd.
//!
//! Everything a driver puts in a queue is untrusted: descriptor chains are
//! validated against guest memory by virtio-queue; a malformed chain is
//! answered (or dropped) with a log line and a metric, never a panic.

pub mod fs;
pub mod mmio;
pub mod net;
pub mod shm;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// The modern-device feature bit; the transport always offers it and
/// requires the driver to accept it (no legacy interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bits.
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// One virtio device's interrupt line: the status register the driver reads
/// and acknowledges, and the irqfd that raises the GSI.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl VirtioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        Self { status: AtomicU32::new(0), irq }
    }

    /// The device placed buffers in a used ring.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INTERRUPT_USED_BUFFER)
    }

    /// The device's configuration space changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(INTERRUPT_CONFIG_CHANGE)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// What InterruptStatus reads.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// A write to InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device receives when the driver has set DRIVER_OK: guest memory
/// (shared: `GuestMemoryMmap` is not `Clone`; use `&*mem` where a
/// `GuestMemory` is expected), its queues (sized and placed by the driver,
/// validated against guest memory), one notification eventfd per queue
/// (same order) and its interrupt.
pub struct ActivatedQueues {
    pub mem: std::sync::Arc<GuestMemoryMmap>,
    pub queues: Vec<virtio_queue::Queue>,
    pub queue_events: Vec<EventFd>,
    pub interrupt: std::sync::Arc<VirtioInterrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("the device is already active")]
    AlreadyActive,
    #[error("{0}")]
    Backend(String),
}

/// A virtio device as the transport drives it. Implementations are also
/// `MutEventSubscriber`s; see the module documentation for the split.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue, in queue order.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device's feature bits; the transport adds VIRTIO_F_VERSION_1.
    fn device_features(&self) -> u64;

    /// The features the driver accepted (a subset of what was offered,
    /// VIRTIO_F_VERSION_1 included), before activation.
    fn ack_features(&mut self, features: u64);

    /// A read of the device-specific configuration space at `offset`. Reads
    /// past its end read as zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A write to the configuration space; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Takes the queues and starts the device. Runs on a vCPU thread: it
    /// must not block; it stores what it got and wakes the device's
    /// event-loop subscriber.
    fn activate(&mut self, queues: ActivatedQueues) -> Result<(), ActivateError>;

    /// The driver reset the device: drop the queues and the per-session
    /// backend state (connections, buffers), and go back to before
    /// activation. The device's configuration (CID, TAP, shared
    /// directory) stays.
    fn reset(&mut self);

    /// The device's shared memory region (virtio 1.2 §2.10), if it has
    /// one: the VM builder places it in guest-physical memory and the
    /// transport tells the driver where. Most devices have none.
    fn shm_region(&self) -> Option<shm::ShmRegion> {
        None
    }
}
