//! A hostile guest driver: split virtqueues in test guest memory whose
//! every field comes from the fuzzer's input, and the device wiring the
//! virtio-mmio transport would do (queues, notification eventfds,
//! interrupt) without the transport.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Input;
use crate::devices::virtio::{ActivatedQueues, VirtioDevice, VirtioInterrupt};

pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Guest memory: two adjacent regions (a buffer may span them), then a
/// hole, then a small third region.
const REGIONS: [(u64, usize); 3] = [(0, 0x10_0000), (0x10_0000, 0x10_0000), (0x30_0000, 0x1_0000)];
/// One past the last guest address.
pub const MEM_END: u64 = 0x31_0000;
/// The rings of queue `q` start at `q * RING_STRIDE`.
const RING_STRIDE: u64 = 0x4000;
/// Where the driver's buffers go.
pub const BUFFERS: u64 = 0x2_0000;
/// The largest queue the driver sets up.
pub const MAX_QUEUE_SIZE: u16 = 256;

pub fn guest_memory() -> Arc<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS.iter().map(|&(at, len)| (GuestAddress(at), len)).collect();
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("test guest memory"))
}

/// The driver's side of one split queue.
pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
    /// Descriptors are handed out round robin: one still in flight may be
    /// overwritten, as a hostile driver would.
    next_desc: u16,
}

impl Ring {
    fn new(mem: &GuestMemoryMmap, q: usize, size: u16) -> (Ring, Queue) {
        let base = q as u64 * RING_STRIDE;
        let ring = Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x1800,
            size,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        };
        mem.write_slice(&[0u8; RING_STRIDE as usize], GuestAddress(base)).expect("ring memory");
        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("queue");
        queue.set_size(size);
        let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = split(ring.desc);
        queue.set_desc_table_address(low, high);
        let (low, high) = split(ring.avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(ring.used);
        queue.set_used_ring_address(low, high);
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "the driver's queue {q} is invalid");
        (ring, queue)
    }

    pub fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(index % self.size);
        mem.write_slice(&raw, GuestAddress(at)).expect("descriptor table");
    }

    /// Makes `head` (any number: the device must cope) available.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).expect("avail ring");
        self.set_avail_idx(mem, self.avail_idx.wrapping_add(1));
    }

    /// Sets the available index, also to nonsense.
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2)).expect("avail ring");
    }

    /// Writes a chain of `(addr, len, flags)` into fresh descriptors,
    /// linked in order, and makes it available. Returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc % self.size;
        let count = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let flags = if (i as u16) + 1 < count { flags | NEXT } else { flags & !NEXT };
            self.write_desc(mem, index, addr, len, flags, next);
        }
        self.next_desc = (head + count.max(1)) % self.size;
        self.publish(mem, head);
        head
    }

    /// The used-ring entries added since the last call, as (id, len).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).map(u16::from_le).expect("used ring");
        let mut entries = Vec::new();
        while self.used_seen != idx {
            let elem = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(elem)).map(u32::from_le).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(elem + 4)).map(u32::from_le).expect("used ring");
            entries.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        entries
    }

    /// One hostile change to the queue, decided by `input`: a raw
    /// descriptor, a raw head, a raw available index, or a chain (direct
    /// or indirect) over buffers that may be anywhere, filled with input
    /// bytes.
    pub fn hostile_op(&mut self, mem: &GuestMemoryMmap, input: &mut Input) {
        match input.u8() % 6 {
            0 => {
                let (index, addr, len, flags, next) =
                    (input.u16(), buffer_addr(input), input.len(), input.u16(), input.u16());
                self.write_desc(mem, index, addr, len, flags, next);
            }
            1 => {
                let head = input.u16();
                self.publish(mem, head);
            }
            2 => {
                let idx = self.avail_idx.wrapping_add(input.u16());
                self.set_avail_idx(mem, idx);
            }
            3 | 4 => {
                let count = 1 + usize::from(input.u8() % 4);
                let descs: Vec<(u64, u32, u16)> = (0..count)
                    .map(|_| {
                        let (addr, len) = (buffer_addr(input), input.len());
                        fill(mem, addr, input.data(512));
                        (addr, len, if input.bool() { WRITE } else { 0 })
                    })
                    .collect();
                self.add_chain(mem, &descs);
            }
            _ => {
                // An indirect table of `count` descriptors in the buffers.
                let table = BUFFERS + u64::from(input.u16()) * 16;
                let count = u32::from(input.u8() % 8);
                for i in 0..count {
                    let (addr, len, flags, next) = (buffer_addr(input), input.len(), input.u16(), input.u16());
                    let mut raw = [0u8; 16];
                    raw[..8].copy_from_slice(&addr.to_le_bytes());
                    raw[8..12].copy_from_slice(&len.to_le_bytes());
                    raw[12..14].copy_from_slice(&flags.to_le_bytes());
                    raw[14..].copy_from_slice(&next.to_le_bytes());
                    let _ = mem.write_slice(&raw, GuestAddress(table + 16 * u64::from(i)));
                }
                let extra = input.u16() & !WRITE;
                let table_len = if input.bool() { count * 16 } else { input.len() };
                self.add_chain(mem, &[(table, table_len, INDIRECT | extra)]);
            }
        }
    }
}

/// A guest address for a buffer: mostly among the buffers, sometimes at
/// a region boundary, past the end of memory, or anywhere at all (the
/// rings included).
pub fn buffer_addr(input: &mut Input) -> u64 {
    match input.u8() % 8 {
        0..=3 => BUFFERS + u64::from(input.u32()) % (0x20_0000 - BUFFERS),
        4 => 0x10_0000 - u64::from(input.u8()),
        5 => 0x20_0000 - u64::from(input.u16()),
        6 => MEM_END - u64::from(input.u8()),
        _ => input.u64(),
    }
}

/// Writes `data` at `addr` as far as guest memory goes.
pub fn fill(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) {
    if !data.is_empty() {
        let _ = mem.write_slice(data, GuestAddress(addr));
    }
}

/// A device as the VMM runs it: activated with queues the driver laid
/// out, served by an event manager, notified through its queue eventfds.
pub struct Wired<D: VirtioDevice + MutEventSubscriber + 'static> {
    pub device: Arc<Mutex<D>>,
    pub mem: Arc<GuestMemoryMmap>,
    pub rings: Vec<Ring>,
    kicks: Vec<EventFd>,
    events: EventManager<Arc<Mutex<D>>>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Wired<D> {
    /// Adds `device` to a fresh event manager and activates it with
    /// queues of `size` (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub fn new(device: D, size: u16) -> Self {
        let device = Arc::new(Mutex::new(device));
        let mut events = EventManager::<Arc<Mutex<D>>>::new().expect("event manager");
        events.add_subscriber(device.clone());
        let mut wired = Wired { device, mem: guest_memory(), rings: Vec::new(), kicks: Vec::new(), events };
        wired.activate(size);
        wired
    }

    /// What the transport does at DRIVER_OK, with fresh rings.
    pub fn activate(&mut self, size: u16) {
        let count = self.device.lock().expect("device lock").queue_max_sizes().len();
        let (rings, queues): (Vec<Ring>, Vec<Queue>) = (0..count).map(|q| Ring::new(&self.mem, q, size)).unzip();
        self.rings = rings;
        self.kicks = (0..count).map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")).collect();
        let activated = ActivatedQueues {
            mem: self.mem.clone(),
            queues,
            queue_events: self.kicks.iter().map(|kick| kick.try_clone().expect("eventfd")).collect(),
            interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))),
        };
        self.device.lock().expect("device lock").activate(activated).expect("activation");
    }

    /// What the transport does when the driver resets the device; the
    /// event loop then catches up.
    pub fn reset(&mut self) {
        self.device.lock().expect("device lock").reset();
        self.pump();
    }

    /// The driver notifies queue `q`.
    pub fn kick(&self, q: usize) {
        if let Some(kick) = self.kicks.get(q) {
            kick.write(1).expect("queue notification");
        }
    }

    /// Runs the event loop until nothing is ready. A device that keeps
    /// itself busy for this many rounds after finite input is stuck.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            if self.events.run_with_timeout(0).expect("event loop") == 0 {
                return;
            }
        }
        panic!("the device is still busy after 1000 event-loop rounds");
    }
}

/// A queue size from the input: a power of two up to [`MAX_QUEUE_SIZE`].
pub fn queue_size(input: &mut Input) -> u16 {
    1 << (input.u8() % 9)
}
