//! The device driven as the VMM drives it: activated through its
//! `VirtioDevice` API, served by a real `event_manager::EventManager`, its
//! queues written by a test guest driver in guest memory, with real Unix
//! sockets on the host side.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use husk_api::devices::VsockConfig;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connection::BUF_ALLOC;
use super::muxer::{MAX_CONNECTIONS, RST_BACKLOG};
use super::packet::{
    Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{Vsock, VsockError, QUEUE_COUNT, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::{ActivatedQueues, VirtioDevice, VirtioInterrupt, TYPE_VSOCK};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 64 << 20;
const QUEUE_SIZE: u16 = 256;
/// Each descriptor index owns a buffer of this size in its queue's area.
const SLOT: u64 = 0x11000;
const RING_BASES: [u64; QUEUE_COUNT] = [0x0, 0x10000, 0x20000];
const BUFFER_BASES: [u64; QUEUE_COUNT] = [0x10_0000, 0x200_0000, 0x320_0000];
const FIRST_HOST_PORT: u32 = 1 << 30;
/// The test guest's RX buffers: a header and 4 KiB, as Linux posts them.
const RX_BUFFER: u32 = HDR_LEN as u32 + 4096;
/// A host port nothing listens on.
const CLOSED_PORT: u32 = 9;
const WAIT: Duration = Duration::from_secs(20);

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("husk-vsock-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One descriptor of a hand-made chain.
#[derive(Clone, Copy)]
struct RawDesc {
    /// None: the descriptor's own buffer.
    addr: Option<u64>,
    len: u32,
    writable: bool,
    /// Position (in the list) of the next descriptor.
    next: Option<usize>,
    extra_flags: u16,
}

impl RawDesc {
    fn readable(len: u32) -> Self {
        RawDesc { addr: None, len, writable: false, next: None, extra_flags: 0 }
    }
    fn writable(len: u32) -> Self {
        RawDesc { writable: true, ..Self::readable(len) }
    }
    fn at(self, addr: u64) -> Self {
        RawDesc { addr: Some(addr), ..self }
    }
    fn then(self, next: usize) -> Self {
        RawDesc { next: Some(next), ..self }
    }
}

/// The driver's side of one split queue.
struct Ring {
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    buffers: u64,
    next_avail: u16,
    next_used: u16,
    free: Vec<u16>,
    /// Chains given to the device: head -> (descriptor, buffer address, length).
    in_flight: HashMap<u16, Vec<(u16, GuestAddress, u32)>>,
}

impl Ring {
    /// Lays the queue out in guest memory (zeroing its rings) and returns
    /// the driver's side and the device's `Queue`, set up as a transport
    /// would. Not with `MockSplitQueue`: its `end()` adds the ring's
    /// element count, not its size in bytes, so its used ring overlaps the
    /// avail ring's second half (virtio-queue 0.17.0).
    fn create(mem: &GuestMemoryMmap, queue: usize) -> (Self, Queue) {
        let base = RING_BASES[queue];
        let desc_table = GuestAddress(base);
        // 16-byte descriptors; the avail ring is 6 + 2 * size bytes.
        let avail = GuestAddress(base + 16 * u64::from(QUEUE_SIZE));
        let used = GuestAddress(avail.0 + 0x400);
        mem.write_slice(&[0u8; 0x1000], avail).unwrap();
        let mut device_queue = Queue::new(QUEUE_SIZE).unwrap();
        device_queue.set_size(QUEUE_SIZE);
        device_queue.set_desc_table_address(Some(desc_table.0 as u32), Some((desc_table.0 >> 32) as u32));
        device_queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        device_queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        device_queue.set_ready(true);
        assert!(device_queue.is_valid(mem));
        let ring = Ring {
            desc_table,
            avail,
            used,
            buffers: BUFFER_BASES[queue],
            next_avail: 0,
            next_used: 0,
            free: (0..QUEUE_SIZE).rev().collect(),
            in_flight: HashMap::new(),
        };
        (ring, device_queue)
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, self.desc_table.unchecked_add(16 * u64::from(index))).unwrap();
    }

    fn buffer(&self, desc: u16) -> GuestAddress {
        GuestAddress(self.buffers + u64::from(desc) * SLOT)
    }

    /// Writes a chain into the descriptor table (not yet available).
    /// Returns the descriptor indices, or None if too few are free.
    fn build(&mut self, mem: &GuestMemoryMmap, chain: &[RawDesc]) -> Option<Vec<u16>> {
        if self.free.len() < chain.len() {
            return None;
        }
        let descs: Vec<u16> = (0..chain.len()).map(|_| self.free.pop().unwrap()).collect();
        let mut recorded = Vec::new();
        for (i, raw) in chain.iter().enumerate() {
            let addr = raw.addr.map_or(self.buffer(descs[i]), GuestAddress);
            let mut flags = raw.extra_flags;
            if raw.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = match raw.next {
                Some(position) => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    descs[position]
                }
                None => 0,
            };
            self.write_desc(mem, descs[i], addr.0, raw.len, flags, next);
            recorded.push((descs[i], addr, raw.len));
        }
        self.in_flight.insert(descs[0], recorded);
        Some(descs)
    }

    /// A chain of `lens` linked in order.
    fn linear(lens: &[u32], writable: bool) -> Vec<RawDesc> {
        let mut chain: Vec<RawDesc> =
            lens.iter().map(|&len| if writable { RawDesc::writable(len) } else { RawDesc::readable(len) }).collect();
        let count = chain.len();
        for (i, desc) in chain.iter_mut().enumerate().take(count.saturating_sub(1)) {
            desc.next = Some(i + 1);
        }
        chain
    }

    fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let avail = self.avail;
        let slot = avail.unchecked_add(4 + 2 * u64::from(self.next_avail % QUEUE_SIZE));
        mem.write_obj(head.to_le(), slot).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail.to_le(), avail.unchecked_add(2)).unwrap();
    }

    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let used = self.used;
        let idx = u16::from_le(mem.read_obj::<u16>(used.unchecked_add(2)).unwrap());
        if idx == self.next_used {
            return None;
        }
        let elem = used.unchecked_add(4 + 8 * u64::from(self.next_used % QUEUE_SIZE));
        let id = u32::from_le(mem.read_obj::<u32>(elem).unwrap());
        let len = u32::from_le(mem.read_obj::<u32>(elem.unchecked_add(4)).unwrap());
        self.next_used = self.next_used.wrapping_add(1);
        Some((id as u16, len))
    }

    fn release(&mut self, head: u16) -> Vec<(u16, GuestAddress, u32)> {
        let descs = self.in_flight.remove(&head).unwrap_or_else(|| {
            panic!(
                "used entry for chain {head}, not in flight (ring at {:?}, next used {})",
                self.avail, self.next_used
            )
        });
        // A looping chain names a descriptor twice.
        for (desc, _, _) in &descs {
            if !self.free.contains(desc) {
                self.free.push(*desc);
            }
        }
        descs
    }
}

/// The test guest's view of one connection, keyed (guest port, host port).
#[derive(Default)]
struct GuestConn {
    established: bool,
    rst: bool,
    shutdown: u32,
    received: Vec<u8>,
    /// Bytes of `received` the "application" has read.
    consumed: usize,
    /// `consumed` as last told to the device.
    advertised_fwd_cnt: u32,
    device_buf_alloc: u32,
    device_fwd_cnt: u32,
    sent: u32,
    /// Data the device sent beyond the credit we gave it.
    credit_violations: usize,
    /// Times the device used up all the credit it knew of.
    device_out_of_credit: usize,
    /// Times the guest had data to send and no credit.
    guest_out_of_credit: usize,
    packets_after_rst: usize,
}

impl GuestConn {
    fn device_credit(&self) -> u32 {
        self.device_buf_alloc.saturating_sub(self.sent.wrapping_sub(self.device_fwd_cnt))
    }
    fn fwd_cnt(&self) -> u32 {
        self.consumed as u32
    }
}

type Key = (u32, u32);

struct Harness {
    /// Holds the device's sockets; removed last.
    _dir: TempDir,
    uds: String,
    device: Arc<Mutex<Vsock>>,
    events: EventManager<Arc<Mutex<Vsock>>>,
    mem: Arc<GuestMemoryMmap>,
    rings: [Ring; QUEUE_COUNT],
    queue_events: Vec<EventFd>,
    irq: EventFd,
    /// The guest's receive buffer per connection.
    buf_alloc: u32,
    /// Data is "read by the application" as soon as it arrives.
    auto_consume: bool,
    rx_layout: Vec<u32>,
    rx_target: usize,
    rx_posted: usize,
    tx_layouts: Vec<Vec<usize>>,
    tx_layout_next: usize,
    conns: HashMap<Key, GuestConn>,
    /// Every packet but data, in arrival order.
    control: Vec<Header>,
    /// TX chains returned: (head, used length).
    tx_returned: Vec<(u16, u32)>,
    /// RX chains returned with nothing in them.
    rx_empty_returns: usize,
}

impl Harness {
    fn new() -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock").to_str().unwrap().to_owned();
        let device = Vsock::new(&VsockConfig { vsock_id: None, guest_cid: GUEST_CID, uds_path: uds.clone() }).unwrap();
        let device = Arc::new(Mutex::new(device));
        let mut events = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        events.add_subscriber(device.clone());
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let rings = [0, 1, 2].map(|queue| Ring::create(&mem, queue).0);
        let mut harness = Harness {
            _dir: dir,
            uds,
            device,
            events,
            mem,
            rings,
            queue_events: Vec::new(),
            irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            buf_alloc: 256 << 10,
            auto_consume: true,
            rx_layout: vec![RX_BUFFER],
            rx_target: 64,
            rx_posted: 0,
            // Split points of a TX packet over descriptors: whole, Linux's
            // header + payload, and splits through the header and payload.
            tx_layouts: vec![vec![], vec![HDR_LEN], vec![10, 44, 50], vec![1, 2, 43, 45, 1000]],
            tx_layout_next: 0,
            conns: HashMap::new(),
            control: Vec::new(),
            tx_returned: Vec::new(),
            rx_empty_returns: 0,
        };
        harness.activate();
        harness
    }

    /// What the transport does at DRIVER_OK, with fresh rings.
    fn activate(&mut self) {
        let mut queues = Vec::new();
        for queue in 0..QUEUE_COUNT {
            let (ring, device_queue) = Ring::create(&self.mem, queue);
            self.rings[queue] = ring;
            queues.push(device_queue);
        }
        self.rx_posted = 0;
        self.queue_events = (0..QUEUE_COUNT).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let activated = ActivatedQueues {
            mem: self.mem.clone(),
            queues,
            queue_events: self.queue_events.iter().map(|evt| evt.try_clone().unwrap()).collect(),
            interrupt: Arc::new(VirtioInterrupt::new(self.irq.try_clone().unwrap())),
        };
        self.device.lock().unwrap().activate(activated).unwrap();
        self.refill_rx();
        self.pump();
    }

    fn port_path(&self, port: u32) -> String {
        format!("{}_{port}", self.uds)
    }

    fn conn(&self, key: Key) -> &GuestConn {
        self.conns.get(&key).unwrap_or_else(|| panic!("no connection {key:?}"))
    }

    fn kick(&self, queue: usize) {
        self.queue_events[queue].write(1).unwrap();
    }

    /// Runs the event loop until it has nothing to do.
    fn pump(&mut self) {
        for _ in 0..200 {
            let handled = self.events.run_with_timeout(0).unwrap();
            self.collect();
            if handled == 0 {
                break;
            }
        }
    }

    fn wait_for(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.collect();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", self.state());
            self.events.run_with_timeout(5).unwrap();
        }
    }

    /// For failure messages.
    fn state(&self) -> String {
        let device = self.device.lock().unwrap();
        let m = &device.metrics;
        format!(
            "tx {} packets, rx {} packets, {} bad, {} opened, {} refused; {} connections; {} TX chains returned, \
             {} RX buffers posted, {} control packets",
            m.tx_packets.get(),
            m.rx_packets.get(),
            m.bad_packets.get(),
            m.connections_opened.get(),
            m.connections_refused.get(),
            device.muxer.connection_count(),
            self.tx_returned.len(),
            self.rx_posted,
            self.control.len()
        )
    }

    fn refill_rx(&mut self) {
        let mut posted = false;
        while self.rx_posted < self.rx_target {
            let chain = Ring::linear(&self.rx_layout, true);
            let Some(descs) = self.rings[RX_QUEUE].build(&self.mem, &chain) else { break };
            self.rings[RX_QUEUE].push_avail(&self.mem, descs[0]);
            self.rx_posted += 1;
            posted = true;
        }
        if posted {
            self.kick(RX_QUEUE);
        }
    }

    /// Takes back used buffers: TX chains are freed, RX packets handled as
    /// a guest stack would.
    fn collect(&mut self) {
        while let Some((head, len)) = self.rings[TX_QUEUE].pop_used(&self.mem) {
            self.rings[TX_QUEUE].release(head);
            self.tx_returned.push((head, len));
        }
        while let Some((head, len)) = self.rings[RX_QUEUE].pop_used(&self.mem) {
            let descs = self.rings[RX_QUEUE].release(head);
            self.rx_posted -= 1;
            if len == 0 {
                self.rx_empty_returns += 1;
                continue;
            }
            let mut bytes = Vec::with_capacity(len as usize);
            for (_, addr, desc_len) in descs {
                let take = (len as usize - bytes.len()).min(desc_len as usize);
                let mut chunk = vec![0u8; take];
                self.mem.read_slice(&mut chunk, addr).unwrap();
                bytes.extend_from_slice(&chunk);
            }
            assert!(bytes.len() >= HDR_LEN, "RX packet of {} bytes", bytes.len());
            let hdr = Header::decode(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(hdr.len as usize, bytes.len() - HDR_LEN, "used length and header disagree: {hdr:?}");
            self.receive(hdr, &bytes[HDR_LEN..]);
        }
        self.refill_rx();
    }

    fn receive(&mut self, hdr: Header, payload: &[u8]) {
        assert_eq!((hdr.src_cid, hdr.dst_cid, hdr.type_), (HOST_CID, GUEST_CID, TYPE_STREAM), "{hdr:?}");
        let key = (hdr.dst_port, hdr.src_port);
        let buf_alloc = self.buf_alloc;
        let conn = self.conns.entry(key).or_default();
        if conn.rst {
            conn.packets_after_rst += 1;
        }
        conn.device_buf_alloc = hdr.buf_alloc;
        conn.device_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RW => {
                let unread = conn.received.len() - conn.consumed;
                if unread + payload.len() > buf_alloc as usize {
                    conn.credit_violations += 1;
                }
                conn.received.extend_from_slice(payload);
                if (conn.received.len() as u32).wrapping_sub(conn.advertised_fwd_cnt) == buf_alloc {
                    conn.device_out_of_credit += 1;
                }
            }
            OP_RESPONSE => conn.established = true,
            OP_RST => conn.rst = true,
            OP_SHUTDOWN => conn.shutdown |= hdr.flags,
            _ => {}
        }
        if hdr.op != OP_RW {
            self.control.push(hdr);
        }
        if hdr.op == OP_RW && self.auto_consume {
            let unread = self.conn(key).received.len() - self.conn(key).consumed;
            self.consume(key, unread);
        }
    }

    /// The guest application reads `n` bytes; the device hears of the
    /// freed space as Linux would tell it (after half the buffer).
    fn consume(&mut self, key: Key, n: usize) {
        let buf_alloc = self.buf_alloc;
        let conn = self.conns.get_mut(&key).unwrap();
        conn.consumed += n;
        if conn.fwd_cnt().wrapping_sub(conn.advertised_fwd_cnt) >= buf_alloc / 2 {
            self.send_op(key, OP_CREDIT_UPDATE, 0);
        }
    }

    fn header(&mut self, key: Key, op: u16, flags: u32, len: usize) -> Header {
        let buf_alloc = self.buf_alloc;
        let conn = self.conns.entry(key).or_default();
        conn.advertised_fwd_cnt = conn.fwd_cnt();
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: key.0,
            dst_port: key.1,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt: conn.fwd_cnt(),
        }
    }

    /// Puts a packet in the TX queue, cut over descriptors by the next
    /// layout; false when the queue has no room (pump and retry).
    fn send_packet(&mut self, hdr: &Header, payload: &[u8]) -> bool {
        let mut bytes = hdr.encode().to_vec();
        bytes.extend_from_slice(payload);
        let layout = self.tx_layouts[self.tx_layout_next % self.tx_layouts.len()].clone();
        let mut cuts: Vec<usize> = layout.into_iter().filter(|&cut| cut < bytes.len()).collect();
        cuts.push(bytes.len());
        let mut lens = Vec::new();
        let mut start = 0;
        for cut in cuts {
            lens.push((cut - start) as u32);
            start = cut;
        }
        let Some(descs) = self.rings[TX_QUEUE].build(&self.mem, &Ring::linear(&lens, false)) else { return false };
        self.tx_layout_next += 1;
        let mut at = 0;
        for (desc, len) in descs.iter().zip(&lens) {
            let addr = self.rings[TX_QUEUE].buffer(*desc);
            self.mem.write_slice(&bytes[at..at + *len as usize], addr).unwrap();
            at += *len as usize;
        }
        self.rings[TX_QUEUE].push_avail(&self.mem, descs[0]);
        self.kick(TX_QUEUE);
        true
    }

    fn send_op(&mut self, key: Key, op: u16, flags: u32) {
        let hdr = self.header(key, op, flags, 0);
        while !self.send_packet(&hdr, &[]) {
            self.pump();
        }
    }

    /// Sends as much of `data[*offset..]` as the device's credit and the
    /// TX queue allow, in packets of up to `chunk` bytes, without waiting.
    fn write_some(&mut self, key: Key, data: &[u8], offset: &mut usize, chunk: usize) {
        while *offset < data.len() {
            let credit = self.conn(key).device_credit() as usize;
            let len = (data.len() - *offset).min(credit).min(chunk);
            if len == 0 {
                self.conns.get_mut(&key).unwrap().guest_out_of_credit += 1;
                return;
            }
            let hdr = self.header(key, OP_RW, 0, len);
            if !self.send_packet(&hdr, &data[*offset..*offset + len]) {
                return;
            }
            self.conns.get_mut(&key).unwrap().sent += len as u32;
            *offset += len;
        }
    }

    fn write_all(&mut self, key: Key, data: &[u8]) {
        let mut offset = 0;
        let deadline = Instant::now() + WAIT;
        while offset < data.len() {
            self.write_some(key, data, &mut offset, 16 << 10);
            assert!(Instant::now() < deadline, "timed out writing {} bytes ({offset} sent)", data.len());
            self.events.run_with_timeout(1).unwrap();
            self.collect();
        }
        self.pump();
    }

    /// Connects guest port `key.0` to host port `key.1`; true when the
    /// device answered RESPONSE, false on RST.
    fn connect(&mut self, key: Key) -> bool {
        self.conns.remove(&key);
        self.send_op(key, OP_REQUEST, 0);
        self.wait_for("the answer to a REQUEST", |h| h.conns.get(&key).is_some_and(|c| c.established || c.rst));
        self.conn(key).established
    }

    /// A REQUEST to a port nobody serves gets its RST: the device is alive.
    fn assert_still_serves(&mut self) {
        static NEXT: AtomicUsize = AtomicUsize::new(60_000);
        let key = (NEXT.fetch_add(1, Ordering::SeqCst) as u32, CLOSED_PORT);
        assert!(!self.connect(key), "a REQUEST to a closed port was accepted");
    }

    fn bad_packets(&self) -> u64 {
        self.device.lock().unwrap().metrics.bad_packets.get()
    }

    fn connection_count(&self) -> usize {
        self.device.lock().unwrap().muxer.connection_count()
    }

    fn endpoint_count(&self) -> usize {
        self.device.lock().unwrap().muxer.endpoint_count()
    }

    /// Posts a hand-made TX chain whose first descriptors hold `bytes`.
    fn send_raw(&mut self, chain: &[RawDesc], bytes: &[u8]) -> u16 {
        let descs = self.rings[TX_QUEUE].build(&self.mem, chain).expect("free descriptors");
        let mut at = 0;
        for (desc, raw) in descs.iter().zip(chain) {
            if at >= bytes.len() || raw.addr.is_some() {
                continue;
            }
            let n = (raw.len as usize).min(bytes.len() - at);
            self.mem.write_slice(&bytes[at..at + n], self.rings[TX_QUEUE].buffer(*desc)).unwrap();
            at += n;
        }
        self.rings[TX_QUEUE].push_avail(&self.mem, descs[0]);
        self.kick(TX_QUEUE);
        descs[0]
    }

    /// Sends a malformed chain; the device must return it unused, count
    /// it, and keep serving.
    fn assert_rejected(&mut self, what: &str, chain: &[RawDesc], bytes: &[u8]) {
        let bad_before = self.bad_packets();
        self.tx_returned.clear();
        let head = self.send_raw(chain, bytes);
        self.wait_for(what, |h| h.tx_returned.iter().any(|&(returned, _)| returned == head));
        assert!(self.tx_returned.contains(&(head, 0)), "{what}: TX chain returned with a length");
        self.tx_returned.clear();
        assert!(self.bad_packets() > bad_before, "{what}: not counted as a bad packet");
        self.assert_still_serves();
    }

    fn irq_count(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }
}

fn request_bytes(src_cid: u64, dst_cid: u64, len: u32, type_: u16, op: u16) -> Vec<u8> {
    Header {
        src_cid,
        dst_cid,
        src_port: 777,
        dst_port: CLOSED_PORT,
        len,
        type_,
        op,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    }
    .encode()
    .to_vec()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Accepts `count` connections on `path`, echoing each until its EOF.
fn echo_server(path: &str, count: usize) -> thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..count {
            let (mut stream, _) = listener.accept().unwrap();
            workers.push(thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        for worker in workers {
            worker.join().unwrap();
        }
    })
}

fn read_line(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// True once `stream` reads end of stream (or a reset) within the wait.
fn reads_eof(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A host client that completed the handshake to guest port `port`, and
/// the guest's key for it.
fn host_connect(h: &mut Harness, port: u32, first_bytes: &[u8]) -> (UnixStream, Key) {
    let mut host = UnixStream::connect(&h.uds).unwrap();
    let mut hello = format!("CONNECT {port}\n").into_bytes();
    hello.extend_from_slice(first_bytes);
    host.write_all(&hello).unwrap();
    let seen = h.control.len();
    h.wait_for("the REQUEST", |h| h.control[seen..].iter().any(|p| p.op == OP_REQUEST && p.dst_port == port));
    let request = *h.control[seen..].iter().find(|p| p.op == OP_REQUEST && p.dst_port == port).unwrap();
    assert!(request.src_port >= FIRST_HOST_PORT);
    let key = (port, request.src_port);
    h.send_op(key, OP_RESPONSE, 0);
    h.conns.get_mut(&key).unwrap().established = true;
    h.pump();
    assert_eq!(read_line(&mut host), format!("OK {}\n", request.src_port));
    (host, key)
}

#[test]
fn the_device_can_move_to_the_event_loop_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Vsock>();
}

#[test]
fn device_identity_and_config_space() {
    let h = Harness::new();
    let device = h.device.lock().unwrap();
    assert_eq!(device.device_type(), TYPE_VSOCK);
    assert_eq!(device.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(device.device_features(), 0);
    let mut cid = [0xffu8; 8];
    device.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut tail = [0xffu8; 4];
    device.read_config(6, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
    let mut low = [0xffu8; 2];
    device.read_config(0, &mut low);
    assert_eq!(low, [3, 0]);
    let mut past = [0xffu8; 8];
    device.read_config(u64::MAX - 2, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn new_replaces_only_a_stale_socket_and_drop_removes_it() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    let config = VsockConfig { vsock_id: None, guest_cid: GUEST_CID, uds_path: path.to_str().unwrap().to_owned() };
    assert!(matches!(Vsock::new(&VsockConfig { guest_cid: 2, ..config.clone() }), Err(VsockError::InvalidConfig(_))));

    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(Vsock::new(&config), Err(VsockError::NotASocket { .. })));
    std::fs::remove_file(&path).unwrap();

    // A socket file nobody serves any more is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let device = Vsock::new(&config).unwrap();
    // A served one is not.
    assert!(matches!(Vsock::new(&config), Err(VsockError::InUse { .. })));
    drop(device);
    assert!(!path.exists());

    // Drop leaves alone a file that replaced ours.
    let device = Vsock::new(&config).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    drop(device);
    assert!(path.exists());
}

#[test]
fn activation_and_interrupts() {
    let mut h = Harness::new();
    let queues = |h: &Harness| {
        // Only the count matters: the device refuses before using them.
        let queues: Vec<Queue> = (0..QUEUE_COUNT).map(|_| Queue::new(QUEUE_SIZE).unwrap()).collect();
        ActivatedQueues {
            mem: h.mem.clone(),
            queues,
            queue_events: h.queue_events.iter().map(|evt| evt.try_clone().unwrap()).collect(),
            interrupt: Arc::new(VirtioInterrupt::new(h.irq.try_clone().unwrap())),
        }
    };
    let again = queues(&h);
    assert!(h.device.lock().unwrap().activate(again).is_err(), "a second activation was accepted");

    // A notification with nothing new raises no interrupt.
    h.irq_count();
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.irq_count(), 0);
    h.assert_still_serves();
    assert!(h.irq_count() > 0);
}

#[test]
fn guest_connects_to_a_host_port_and_echoes() {
    let mut h = Harness::new();
    let server = echo_server(&h.port_path(1234), 1);
    let key = (50_000, 1234);
    assert!(h.connect(key));
    h.write_all(key, b"hello, vsock");
    h.wait_for("the echo", |h| h.conn(key).received.len() == 12);
    assert_eq!(h.conn(key).received, b"hello, vsock");

    // The guest closes: the host reader gets its EOF, the guest its RST.
    h.send_op(key, OP_SHUTDOWN, SHUTDOWN_BOTH);
    h.wait_for("the RST closing the connection", |h| h.conn(key).rst);
    server.join().unwrap();
    assert_eq!(h.connection_count(), 0);
    let metrics = h.device.lock().unwrap().metrics();
    assert_eq!(metrics.connections_opened.get(), 1);
    assert_eq!(metrics.tx_bytes.get(), 12);
    assert_eq!(metrics.rx_bytes.get(), 12);
    assert_eq!(metrics.bad_packets.get(), 0);
}

#[test]
fn guest_connection_to_a_closed_port_is_refused() {
    let mut h = Harness::new();
    assert!(!h.connect((50_001, CLOSED_PORT)));
    assert_eq!(h.device.lock().unwrap().metrics.connections_refused.get(), 1);
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn host_connects_to_a_guest_port() {
    let mut h = Harness::new();
    // Bytes right after the CONNECT line are the stream's first data.
    let (mut host, key) = host_connect(&mut h, 5000, b"early ");
    assert_eq!(key.1, FIRST_HOST_PORT);
    host.write_all(b"ping").unwrap();
    h.wait_for("the host's data", |h| h.conn(key).received.len() == 10);
    assert_eq!(h.conn(key).received, b"early ping");

    h.write_all(key, b"pong");
    let mut reply = [0u8; 4];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");

    // A second host connection gets the next host port.
    let (_second, second_key) = host_connect(&mut h, 5000, b"");
    assert_eq!(second_key.1, FIRST_HOST_PORT + 1);

    drop(host);
    h.wait_for("the end of the connection", |h| h.conn(key).rst);
    assert_eq!(h.conn(key).packets_after_rst, 0);
    assert_eq!(h.device.lock().unwrap().metrics.connections_opened.get(), 2);
}

#[test]
fn sixteen_concurrent_streams_keep_their_data() {
    const STREAMS: u32 = 16;
    const SIZE: usize = 96 << 10;
    let mut h = Harness::new();
    let server = echo_server(&h.port_path(7000), STREAMS as usize);
    let keys: Vec<Key> = (0..STREAMS).map(|i| (40_000 + i, 7000)).collect();
    for &key in &keys {
        assert!(h.connect(key));
    }
    let data: Vec<Vec<u8>> = (0..STREAMS).map(|i| pattern(u64::from(i) + 1, SIZE)).collect();
    let mut offsets = vec![0usize; keys.len()];
    let deadline = Instant::now() + WAIT;
    while offsets.iter().any(|&offset| offset < SIZE) {
        // Interleaved: a few KiB of each stream in turn.
        for (i, &key) in keys.iter().enumerate() {
            let stop = (offsets[i] + 3000).min(SIZE);
            h.write_some(key, &data[i][..stop], &mut offsets[i], 1500);
        }
        assert!(Instant::now() < deadline, "timed out sending");
        h.events.run_with_timeout(1).unwrap();
        h.collect();
    }
    h.wait_for("every echo", |h| keys.iter().all(|&key| h.conn(key).received.len() == SIZE));
    for (i, &key) in keys.iter().enumerate() {
        assert!(h.conn(key).received == data[i], "stream {i} corrupted");
        assert_eq!(h.conn(key).credit_violations, 0);
        h.send_op(key, OP_SHUTDOWN, SHUTDOWN_BOTH);
    }
    h.wait_for("every close", |h| keys.iter().all(|&key| h.conn(key).rst));
    server.join().unwrap();
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn megabytes_to_the_guest_under_flow_control() {
    const SIZE: usize = 4 << 20;
    let mut h = Harness::new();
    // A small receive buffer, read a little at a time: the device keeps
    // stopping for credit.
    h.buf_alloc = 16 << 10;
    h.auto_consume = false;
    let data = pattern(42, SIZE);
    let expected = fnv1a(&data);
    let listener = UnixListener::bind(h.port_path(8000)).unwrap();
    let sender = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(&data).unwrap();
    });
    let key = (41_000, 8000);
    assert!(h.connect(key));
    let deadline = Instant::now() + WAIT;
    while h.conn(key).consumed < SIZE || !h.conn(key).rst {
        assert!(Instant::now() < deadline, "timed out: {} of {SIZE} bytes", h.conn(key).consumed);
        h.events.run_with_timeout(1).unwrap();
        h.collect();
        let unread = h.conn(key).received.len() - h.conn(key).consumed;
        h.consume(key, unread.min(3000));
    }
    sender.join().unwrap();
    let conn = h.conn(key);
    assert_eq!(conn.received.len(), SIZE);
    assert_eq!(fnv1a(&conn.received), expected);
    assert_eq!(conn.credit_violations, 0, "the device sent beyond the guest's credit");
    assert!(conn.device_out_of_credit > 0, "the device never had to wait for credit");
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn megabytes_to_a_slow_host_reader_under_flow_control() {
    const SIZE: usize = 4 << 20;
    let mut h = Harness::new();
    let data = pattern(7, SIZE);
    let listener = UnixListener::bind(h.port_path(8001)).unwrap();
    // Reads slowly, so the socket fills and the device must hold data and
    // wait for the socket to be writable again.
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 32 << 10];
        loop {
            match stream.read(&mut buf).unwrap() {
                0 => break,
                n => received.extend_from_slice(&buf[..n]),
            }
            if received.len() % (256 << 10) < buf.len() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        received
    });
    let key = (41_001, 8001);
    assert!(h.connect(key));
    assert_eq!(h.conn(key).device_buf_alloc, BUF_ALLOC);
    h.write_all(key, &data);
    h.send_op(key, OP_SHUTDOWN, SHUTDOWN_SEND);
    let deadline = Instant::now() + WAIT;
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "timed out waiting for the host reader");
        h.events.run_with_timeout(5).unwrap();
        h.collect();
    }
    let received = reader.join().unwrap();
    assert_eq!(received.len(), SIZE);
    assert_eq!(fnv1a(&received), fnv1a(&data));
    assert!(h.conn(key).guest_out_of_credit > 0, "the device never held back the guest");
    // The host closed after its EOF: the connection ends.
    h.wait_for("the end of the connection", |h| h.conn(key).rst);
    assert_eq!(h.device.lock().unwrap().metrics.tx_bytes.get(), SIZE as u64);
}

#[test]
fn host_closing_mid_stream_resets_the_guest() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.port_path(8002)).unwrap();
    let closer = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        stream.read_exact(&mut buf).unwrap();
        // Closes with the guest still sending.
    });
    let key = (41_002, 8002);
    assert!(h.connect(key));
    let data = pattern(3, 1 << 20);
    let mut offset = 0;
    let deadline = Instant::now() + WAIT;
    while !h.conn(key).rst {
        assert!(Instant::now() < deadline, "no RST after the host closed");
        if offset < data.len() {
            h.write_some(key, &data, &mut offset, 4096);
        }
        h.events.run_with_timeout(1).unwrap();
        h.collect();
    }
    closer.join().unwrap();
    h.pump();
    assert_eq!(h.connection_count(), 0);
    h.assert_still_serves();
}

#[test]
fn a_closed_connection_whose_host_never_reads_is_reset_in_time() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.port_path(8003)).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let sleeper = thread::spawn(move || {
        let (_stream, _) = listener.accept().unwrap();
        let _ = released.recv();
    });
    let key = (41_003, 8003);
    assert!(h.connect(key));
    // Fill the socket and the device's backlog: the guest runs out of credit.
    let data = pattern(5, 4 << 20);
    let mut offset = 0;
    let deadline = Instant::now() + WAIT;
    while h.conn(key).guest_out_of_credit < 10 {
        assert!(Instant::now() < deadline, "the guest never ran out of credit");
        h.write_some(key, &data, &mut offset, 16 << 10);
        h.events.run_with_timeout(2).unwrap();
        h.collect();
    }
    h.send_op(key, OP_SHUTDOWN, SHUTDOWN_BOTH);
    h.pump();
    assert!(!h.conn(key).rst, "reset before the backlog had its chance");
    h.wait_for("the RST after the flush timeout", |h| h.conn(key).rst);
    assert_eq!(h.connection_count(), 0);
    release.send(()).unwrap();
    sleeper.join().unwrap();
}

#[test]
fn a_host_reply_before_close_survives_the_guest_writing_on() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.port_path(8004)).unwrap();
    let reply = pattern(11, 32 << 10);
    let (close, closing) = std::sync::mpsc::channel::<()>();
    let server = {
        let reply = reply.clone();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 7];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&reply).unwrap();
            closing.recv().unwrap();
        })
    };
    // The guest reads slowly: most of the reply waits in the host socket,
    // which the device stops watching while the guest has no room.
    h.buf_alloc = 4096;
    h.auto_consume = false;
    let key = (41_004, 8004);
    assert!(h.connect(key));
    h.write_all(key, b"request");
    h.wait_for("the guest's buffer to fill", |h| h.conn(key).device_out_of_credit > 0);
    close.send(()).unwrap();
    server.join().unwrap();
    // The host end is closed (the device has not seen it yet); the guest,
    // not done reading, writes on: EPIPE, and its data is dropped.
    h.write_all(key, &[7u8; 5000]);
    assert!(!h.conn(key).rst);
    let deadline = Instant::now() + WAIT;
    while !h.conn(key).rst {
        assert!(Instant::now() < deadline, "the connection never ended");
        h.events.run_with_timeout(2).unwrap();
        h.collect();
        let unread = h.conn(key).received.len() - h.conn(key).consumed;
        h.consume(key, unread);
    }
    assert!(h.conn(key).received == reply, "the host's reply was cut");
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn host_client_closing_delivers_its_data_then_ends_the_connection() {
    let mut h = Harness::new();
    let (mut host, key) = host_connect(&mut h, 5001, b"");
    host.write_all(b"last words").unwrap();
    drop(host);
    h.wait_for("the end of the connection", |h| h.conn(key).rst);
    assert_eq!(h.conn(key).received, b"last words");
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn half_closes_work_both_ways() {
    let mut h = Harness::new();
    let (mut host, key) = host_connect(&mut h, 5002, b"");
    // The host is done sending but still reads: the guest sees the end of
    // the stream, and can still answer.
    host.write_all(b"request").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    h.wait_for("the host's end of stream", |h| h.conn(key).shutdown & SHUTDOWN_SEND != 0);
    assert_eq!(h.conn(key).received, b"request");
    assert!(!h.conn(key).rst);
    h.write_all(key, b"response");
    // The guest closes its side too: the host reads the answer, then EOF.
    h.send_op(key, OP_SHUTDOWN, SHUTDOWN_SEND);
    h.pump();
    let mut answer = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"response");
    h.wait_for("the RST ending the connection", |h| h.conn(key).rst);
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn host_handshakes_are_bounded() {
    let mut h = Harness::new();
    // Not a CONNECT line, or no line at all: closed.
    for junk in [&b"HELLO 5000\n"[..], &[b'x'; 40][..], b"CONNECT 99999999999\n"] {
        let mut host = UnixStream::connect(&h.uds).unwrap();
        host.write_all(junk).unwrap();
        h.pump();
        assert!(reads_eof(&mut host), "{:?} was not refused", String::from_utf8_lossy(junk));
    }
    // A client that never sends its line is dropped after a while.
    let mut silent = UnixStream::connect(&h.uds).unwrap();
    h.pump();
    assert_eq!(h.endpoint_count(), 1);
    h.wait_for("the handshake timeout", |h| h.endpoint_count() == 0);
    assert!(reads_eof(&mut silent));

    // The guest refuses (RST): the host client is closed.
    let mut refused = UnixStream::connect(&h.uds).unwrap();
    refused.write_all(b"CONNECT 6000\n").unwrap();
    let seen = h.control.len();
    h.wait_for("the REQUEST", |h| h.control[seen..].iter().any(|p| p.op == OP_REQUEST));
    let request = *h.control[seen..].iter().find(|p| p.op == OP_REQUEST).unwrap();
    h.send_op((6000, request.src_port), OP_RST, 0);
    h.pump();
    assert!(reads_eof(&mut refused));

    // The guest never answers: the host client is closed, the guest reset.
    let mut ignored = UnixStream::connect(&h.uds).unwrap();
    ignored.write_all(b"CONNECT 6001\n").unwrap();
    let seen = h.control.len();
    h.wait_for("the REQUEST", |h| h.control[seen..].iter().any(|p| p.op == OP_REQUEST));
    let request = *h.control[seen..].iter().find(|p| p.op == OP_REQUEST).unwrap();
    h.wait_for("the response timeout", |h| h.conns.get(&(6001, request.src_port)).is_some_and(|c| c.rst));
    assert!(reads_eof(&mut ignored));
    assert_eq!(h.endpoint_count(), 0);
    assert_eq!(h.device.lock().unwrap().metrics.connections_refused.get(), 6);
}

#[test]
fn host_connection_before_activation_waits_for_the_driver() {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock").to_str().unwrap().to_owned();
    let device = Vsock::new(&VsockConfig { vsock_id: None, guest_cid: GUEST_CID, uds_path: uds.clone() }).unwrap();
    let device = Arc::new(Mutex::new(device));
    let mut events = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    events.add_subscriber(device.clone());
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 5003\n").unwrap();
    for _ in 0..10 {
        events.run_with_timeout(1).unwrap();
    }
    assert_eq!(device.lock().unwrap().muxer.connection_count(), 1);
    // The driver comes up: the REQUEST is delivered.
    let mut h = Harness { _dir: dir, uds, device, events, ..Harness::new() };
    h.activate();
    h.wait_for("the REQUEST", |h| h.control.iter().any(|p| p.op == OP_REQUEST && p.dst_port == 5003));
    drop(host);
}

#[test]
fn connection_limit_refuses_more() {
    let mut h = Harness::new();
    let server = echo_server(&h.port_path(7001), MAX_CONNECTIONS);
    let keys: Vec<Key> = (0..MAX_CONNECTIONS as u32).map(|i| (30_000 + i, 7001)).collect();
    for &key in &keys {
        assert!(h.connect(key));
    }
    assert!(!h.connect((31_000, 7001)), "a connection above the limit was accepted");
    // A host client is refused as well.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    h.pump();
    assert!(reads_eof(&mut host));
    for &key in &keys {
        h.send_op(key, OP_RST, 0);
    }
    h.pump();
    server.join().unwrap();
    assert_eq!(h.endpoint_count(), 0);
    h.assert_still_serves();
}

#[test]
fn credit_request_is_answered() {
    let mut h = Harness::new();
    let _server = echo_server(&h.port_path(7003), 1);
    let key = (42_000, 7003);
    assert!(h.connect(key));
    let seen = h.control.len();
    h.send_op(key, OP_CREDIT_REQUEST, 0);
    h.wait_for("the credit update", |h| h.control[seen..].iter().any(|p| p.op == OP_CREDIT_UPDATE));
    let update = *h.control[seen..].iter().find(|p| p.op == OP_CREDIT_UPDATE).unwrap();
    assert_eq!((update.buf_alloc, update.fwd_cnt), (BUF_ALLOC, 0));
    h.send_op(key, OP_RST, 0);
    h.pump();
}

#[test]
fn packets_for_unknown_connections_get_a_reset() {
    let mut h = Harness::new();
    for op in [OP_RW, OP_SHUTDOWN, OP_RESPONSE, OP_CREDIT_UPDATE] {
        let key = (43_000 + u32::from(op), 1234);
        h.send_op(key, op, 0);
        h.wait_for("the RST", |h| h.conns.get(&key).is_some_and(|c| c.rst));
    }
    // An RST is never answered.
    let seen = h.control.len();
    h.send_op((43_100, 1234), OP_RST, 0);
    h.pump();
    assert_eq!(h.control.len(), seen);
    assert_eq!(h.bad_packets(), 0);
}

#[test]
fn reset_drops_connections_and_the_queue_registrations() {
    let mut h = Harness::new();
    let server = echo_server(&h.port_path(7004), 1);
    let key = (44_000, 7004);
    assert!(h.connect(key));
    let (mut host, _) = host_connect(&mut h, 5004, b"");

    h.device.lock().unwrap().reset();
    h.pump();
    // Both host streams are closed; nothing was sent to the guest.
    server.join().unwrap();
    assert!(reads_eof(&mut host));
    assert_eq!(h.endpoint_count(), 0);
    // Notifications on the old queues do nothing.
    let returned = h.tx_returned.len();
    h.send_op((44_001, CLOSED_PORT), OP_REQUEST, 0);
    h.pump();
    assert_eq!(h.tx_returned.len(), returned);

    // The old eventfds go (their fd numbers are then reused by the new
    // ones): the new session must be served through its own.
    h.queue_events.clear();
    h.activate();
    h.assert_still_serves();
    let (_host, _) = host_connect(&mut h, 5005, b"");
}

#[test]
fn full_reset_backlog_pauses_tx_instead_of_dropping() {
    let mut h = Harness::new();
    h.rx_target = 0;
    h.tx_layouts = vec![vec![]];
    // A new session without RX buffers.
    h.device.lock().unwrap().reset();
    h.queue_events.clear();
    h.activate();
    let count = RST_BACKLOG as u32 + 100;
    let mut sent = 0;
    let deadline = Instant::now() + WAIT;
    while sent < count {
        let hdr = h.header((20_000 + sent, CLOSED_PORT), OP_REQUEST, 0, 0);
        if h.send_packet(&hdr, &[]) {
            sent += 1;
        } else {
            assert!(Instant::now() < deadline, "the TX queue never drained");
            h.pump();
        }
    }
    h.pump();
    // The device stopped taking TX chains when its RST backlog was full.
    assert_eq!(h.rings[TX_QUEUE].in_flight.len(), 100);
    h.rx_target = 64;
    h.refill_rx();
    h.wait_for("every RST", |h| (0..count).all(|i| h.conns.get(&(20_000 + i, CLOSED_PORT)).is_some_and(|c| c.rst)));
    assert_eq!(h.device.lock().unwrap().metrics.lost_resets.get(), 0);
}

#[test]
fn hostile_tx_chains_are_consumed_and_counted() {
    let mut h = Harness::new();
    let valid = request_bytes(GUEST_CID, HOST_CID, 0, TYPE_STREAM, OP_REQUEST);
    let mem_end = MEM_SIZE as u64;

    h.assert_rejected("a short header", &[RawDesc::readable(20)], &valid[..20]);
    h.assert_rejected("only empty descriptors", &Ring::linear(&[0, 0], false), &[]);
    let long = request_bytes(GUEST_CID, HOST_CID, 100, TYPE_STREAM, OP_RW);
    h.assert_rejected("a length beyond the chain", &Ring::linear(&[44, 10], false), &long);
    let huge = request_bytes(GUEST_CID, HOST_CID, MAX_PAYLOAD as u32 + 1, TYPE_STREAM, OP_RW);
    h.assert_rejected("a length above the limit", &Ring::linear(&[44, MAX_PAYLOAD as u32 + 1], false), &huge);
    h.assert_rejected("a writable descriptor", &[RawDesc::readable(44).then(1), RawDesc::writable(100)], &valid);
    h.assert_rejected("a writable header", &[RawDesc::writable(44)], &[]);
    let wrong_src = request_bytes(4, HOST_CID, 0, TYPE_STREAM, OP_REQUEST);
    h.assert_rejected("another source CID", &[RawDesc::readable(44)], &wrong_src);
    let wrong_dst = request_bytes(GUEST_CID, GUEST_CID, 0, TYPE_STREAM, OP_REQUEST);
    h.assert_rejected("another destination CID", &[RawDesc::readable(44)], &wrong_dst);
    h.assert_rejected("an address past memory", &[RawDesc::readable(44).at(mem_end)], &[]);
    h.assert_rejected("a buffer across the end of memory", &[RawDesc::readable(44).at(mem_end - 20)], &[]);
    h.assert_rejected("an address that wraps", &[RawDesc::readable(44).at(u64::MAX - 10)], &[]);
    h.assert_rejected("a huge descriptor", &[RawDesc::readable(u32::MAX).at(0x100_0000)], &[]);
    let indirect = RawDesc { extra_flags: VRING_DESC_F_INDIRECT as u16, ..RawDesc::readable(17) };
    h.assert_rejected("a malformed indirect table", &[indirect], &[]);

    // Well-formed but unsupported: answered with an RST, and counted.
    for (what, bytes) in [
        ("an unknown operation", request_bytes(GUEST_CID, HOST_CID, 0, TYPE_STREAM, 99)),
        ("a datagram packet", request_bytes(GUEST_CID, HOST_CID, 0, 3, OP_REQUEST)),
    ] {
        let bad_before = h.bad_packets();
        h.conns.remove(&(777, CLOSED_PORT));
        h.send_raw(&[RawDesc::readable(44)], &bytes);
        h.wait_for(what, |h| h.conns.get(&(777, CLOSED_PORT)).is_some_and(|c| c.rst));
        assert_eq!(h.bad_packets(), bad_before + 1, "{what}");
    }

    // Zero-length descriptors around a good packet are fine.
    h.conns.remove(&(777, CLOSED_PORT));
    h.send_raw(&Ring::linear(&[0, 44, 0], false), &valid);
    h.wait_for("the RST for a packet among empty descriptors", |h| {
        h.conns.get(&(777, CLOSED_PORT)).is_some_and(|c| c.rst)
    });

    // virtio-queue ends a chain where it would pass 4 GiB: what is before
    // is a packet like any other.
    h.conns.remove(&(777, CLOSED_PORT));
    h.send_raw(&[RawDesc::readable(44).then(1), RawDesc::readable(u32::MAX).at(0x100_0000)], &valid);
    h.wait_for("the RST for a chain cut at 4 GiB", |h| h.conns.get(&(777, CLOSED_PORT)).is_some_and(|c| c.rst));

    // Looping chains end after a queue's worth of descriptors.
    let before = h.tx_returned.len();
    h.send_raw(&[RawDesc::readable(44).then(1), RawDesc::readable(4).then(0)], &valid);
    h.send_raw(&[RawDesc::readable(44).then(0)], &valid);
    h.wait_for("the looping chains back", |h| h.tx_returned.len() >= before + 2);
    h.assert_still_serves();

    // A head index past the queue: no used entry possible, no harm done.
    h.rings[TX_QUEUE].push_avail(&h.mem, QUEUE_SIZE + 44);
    h.kick(TX_QUEUE);
    h.pump();
    h.assert_still_serves();
    assert!(h.bad_packets() >= 17);
}

#[test]
fn hostile_rx_buffers_are_consumed_and_counted() {
    let mut h = Harness::new();
    h.rx_target = 0;
    h.device.lock().unwrap().reset();
    h.queue_events.clear();
    h.activate();
    // Something for the guest: an RST for a refused connection.
    h.send_op((45_000, CLOSED_PORT), OP_REQUEST, 0);
    h.pump();
    let bad = [
        vec![RawDesc::readable(RX_BUFFER)],
        vec![RawDesc::writable(20)],
        vec![RawDesc::writable(RX_BUFFER).at(MEM_SIZE as u64 - 8)],
        vec![RawDesc::writable(40).then(1), RawDesc::readable(100)],
    ];
    for chain in &bad {
        let descs = h.rings[RX_QUEUE].build(&h.mem, chain).unwrap();
        h.rings[RX_QUEUE].push_avail(&h.mem, descs[0]);
        h.rx_posted += 1;
    }
    h.kick(RX_QUEUE);
    h.pump();
    assert_eq!(h.rx_empty_returns, bad.len());
    assert_eq!(h.bad_packets(), bad.len() as u64);
    assert!(!h.conns.get(&(45_000, CLOSED_PORT)).is_some_and(|c| c.rst));
    // A good buffer then gets the RST, even one the header straddles.
    h.rx_layout = vec![3, 30, 11, 100];
    h.rx_target = 1;
    h.refill_rx();
    h.wait_for("the RST", |h| h.conns.get(&(45_000, CLOSED_PORT)).is_some_and(|c| c.rst));
}

#[test]
fn data_survives_any_rx_buffer_layout() {
    let mut h = Harness::new();
    // The header split over three descriptors, the payload over two.
    h.rx_layout = vec![10, 30, 4 + 1000, 3000];
    h.device.lock().unwrap().reset();
    h.queue_events.clear();
    h.activate();
    let (host, key) = host_connect(&mut h, 5006, b"");
    let data = pattern(9, 200 << 10);
    let writer = {
        let data = data.clone();
        let mut host = host.try_clone().unwrap();
        thread::spawn(move || host.write_all(&data).unwrap())
    };
    h.wait_for("all the data", |h| h.conn(key).received.len() == data.len());
    writer.join().unwrap();
    assert!(h.conn(key).received == data);
    assert_eq!(h.conn(key).credit_violations, 0);
    host.shutdown(Shutdown::Both).unwrap();
}
