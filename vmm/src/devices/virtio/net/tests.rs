//! The device against real TAP devices (root and /dev/net/tun, as on the
//! CI machine), with queues and buffers a mock driver lays out in guest
//! memory.
//!
//! Each test makes its own multi-queue TAP and detaches its own queue at
//! once: the device's queue is then the only one, so every frame the host
//! sends out of the TAP reaches the device. The test plays the host with a
//! packet socket bound to the TAP: what it sends, the device reads; what
//! the device writes, it receives (its frames carry a test EtherType, and
//! IPv6 is off on the TAP, so nothing else shows up). The TAP disappears
//! when the test's file and the device's are closed.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use husk_api::devices::{NetworkInterfaceConfig, RateLimiterConfig, TokenBucket as TokenBucketConfig};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::INTERRUPT_USED_BUFFER;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const ALL_FEATURES: u64 = OFFERED_FEATURES | VIRTIO_F_VERSION_1;
const TEST_ETHERTYPE: u16 = 0x88b5;

const MEM_SIZE: usize = 4 << 20;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
const BUFFERS: u64 = 0x10000;
/// Far beyond MEM_SIZE.
const OUTSIDE: u64 = 0x1_0000_0000;

static NEXT_TAP: AtomicU32 = AtomicU32::new(0);

fn check(ret: libc::c_int, what: &str) {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// An ioctl that reads (and maybe writes) an ifreq.
fn ioctl_ifreq(fd: RawFd, request: libc::Ioctl, ifreq: &mut libc::ifreq, what: &str) {
    // SAFETY: every request passed here takes a pointer to an ifreq, which
    // points to a live one.
    check(unsafe { libc::ioctl(fd, request, ifreq as *mut libc::ifreq) }, what);
}

/// An ioctl that takes an integer by value.
fn ioctl_value(fd: RawFd, request: libc::Ioctl, value: libc::c_ulong, what: &str) {
    // SAFETY: every request passed here takes its argument by value; no
    // memory is passed.
    check(unsafe { libc::ioctl(fd, request, value) }, what);
}

/// A TAP device of one test (see the module documentation).
struct TestTap {
    name: String,
    ifindex: libc::c_int,
    _queue: File,
}

impl TestTap {
    fn new() -> Self {
        Self::with_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE, true)
    }

    fn with_flags(flags: libc::c_int, detach: bool) -> Self {
        let name = format!("hsk{}x{}", std::process::id(), NEXT_TAP.fetch_add(1, Ordering::SeqCst));
        assert!(name.len() <= MAX_TAP_NAME_LEN, "{name}");
        let queue = OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("open /dev/net/tun");
        let fd = queue.as_raw_fd();
        let mut request = tap::ifreq_with_flags(&name, flags);
        ioctl_ifreq(fd, libc::TUNSETIFF, &mut request, "TUNSETIFF");
        // Not persistent: gone when the last file on it closes.
        ioctl_value(fd, libc::TUNSETPERSIST, 0, "TUNSETPERSIST");
        if detach {
            let mut request = tap::ifreq_with_flags("", libc::IFF_DETACH_QUEUE);
            ioctl_ifreq(fd, libc::TUNSETQUEUE, &mut request, "TUNSETQUEUE");
        }
        // No IPv6, so no router solicitations or DAD frames on the TAP.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // SAFETY: a plain socket call.
        let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(socket, "socket");
        // SAFETY: the socket was just created and is owned here.
        let socket = unsafe { OwnedFd::from_raw_fd(socket) };
        let mut request = tap::ifreq_with_flags(&name, 0);
        ioctl_ifreq(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request, "SIOCGIFFLAGS");
        // SAFETY: SIOCGIFFLAGS filled in the flags member.
        unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl_ifreq(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request, "SIOCSIFFLAGS");
        let c_name = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) } as libc::c_int;
        assert_ne!(ifindex, 0);
        TestTap { name, ifindex, _queue: queue }
    }
}

/// The host's side of the TAP: an AF_PACKET socket for the test EtherType.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifindex: libc::c_int) -> Self {
        let protocol = TEST_ETHERTYPE.to_be();
        // SAFETY: a plain socket call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol.into()) };
        check(fd, "socket(AF_PACKET)");
        // SAFETY: the socket was just created and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        // SAFETY: bind reads a sockaddr_ll of the given size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)");
        PacketSocket(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame`.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// The next frame within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        if !wait_readable(self.0.as_raw_fd(), timeout) {
            return None;
        }
        let mut buf = vec![0u8; MAX_BUFFER_LEN];
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(got >= 0, "recv: {}", std::io::Error::last_os_error());
        buf.truncate(got as usize);
        Some(buf)
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid pollfd.
    unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as libc::c_int) == 1 }
}

const WAIT: Duration = Duration::from_secs(3);

/// An Ethernet frame of `len` bytes to everyone, with the test EtherType
/// and a payload that depends on `seed`.
fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, seed]);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend((0..len - 14).map(|i| seed.wrapping_add(i as u8)));
    frame
}

fn config(tap: &str) -> NetworkInterfaceConfig {
    NetworkInterfaceConfig {
        iface_id: "eth0".into(),
        host_dev_name: tap.into(),
        guest_mac: Some("06:00:ac:10:00:02".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// The driver's side of one queue.
struct Ring<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        Ring { mock: MockSplitQueue::create(mem, GuestAddress(at), QUEUE_MAX_SIZE), next_desc: 0 }
    }

    fn queue(&self) -> Queue {
        self.mock.create_queue().unwrap()
    }

    fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mock.desc_table().store(index, RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))).unwrap();
    }

    /// Makes the chain starting at descriptor `head` available.
    fn publish(&self, head: u16) {
        let idx = self.mock.avail().idx().load();
        self.mock.avail().ring().ref_at(usize::from(idx % QUEUE_MAX_SIZE)).unwrap().store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    /// Chains `(addr, len, flags)` descriptors in order and makes the chain
    /// available; returns its head.
    fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = head + i as u16;
            let (flags, next) = if i + 1 < descs.len() { (flags | NEXT, index + 1) } else { (flags, 0) };
            self.store(index, addr, len, flags, next);
        }
        self.next_desc += descs.len() as u16;
        self.publish(head);
        head
    }

    /// One descriptor pointing to `next` (itself for a loop).
    fn add_linked(&mut self, addr: u64, len: u32, flags: u16, next: impl FnOnce(u16) -> u16) -> u16 {
        let index = self.next_desc;
        self.store(index, addr, len, flags | NEXT, next(index));
        self.next_desc += 1;
        self.publish(index);
        index
    }

    /// The used ring: (head, length) in order.
    fn used(&self) -> Vec<(u16, u32)> {
        let count = self.mock.used().idx().load();
        (0..count)
            .map(|i| {
                let elem = self.mock.used().ring().ref_at(usize::from(i)).unwrap().load();
                (elem.id() as u16, elem.len())
            })
            .collect()
    }
}

struct Wiring {
    interrupt: Arc<VirtioInterrupt>,
    rx_kick: EventFd,
    tx_kick: EventFd,
}

impl Wiring {
    /// Whether the device raised its interrupt since the last call.
    fn take_interrupt(&self) -> bool {
        let raised = self.interrupt.status() & INTERRUPT_USED_BUFFER != 0;
        self.interrupt.clear();
        raised
    }
}

fn activate(net: &mut Net, mem: &Arc<GuestMemoryMmap>, rx: &Ring, tx: &Ring) -> Wiring {
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (rx_kick, tx_kick) = (eventfd(), eventfd());
    let interrupt = Arc::new(VirtioInterrupt::new(eventfd()));
    net.activate(ActivatedQueues {
        mem: mem.clone(),
        queues: vec![rx.queue(), tx.queue()],
        queue_events: vec![rx_kick.try_clone().unwrap(), tx_kick.try_clone().unwrap()],
        interrupt: interrupt.clone(),
    })
    .unwrap();
    Wiring { interrupt, rx_kick, tx_kick }
}

/// Runs the receive path until `done` holds: frames the test sent reach
/// the TAP's queue asynchronously.
fn pump_rx(net: &mut Net, done: impl Fn(&Net) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        net.process_rx();
        if done(net) {
            return;
        }
        assert!(Instant::now() < deadline, "the receive path did not get there");
        wait_readable(net.tap.as_raw_fd(), Duration::from_millis(10));
    }
}

fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn num_buffers(header: &[u8]) -> u16 {
    u16::from_le_bytes([header[NUM_BUFFERS_OFFSET], header[NUM_BUFFERS_OFFSET + 1]])
}

#[test]
fn transmitted_frames_reach_the_tap_whatever_the_buffer_layout() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let rx = Ring::new(&mem, RX_RING);
    let mut tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut net, &mem, &rx, &tx);

    // The header alone, then the frame over two buffers.
    let first = test_frame(300, 1);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUFFERS)).unwrap();
    mem.write_slice(&first[..100], GuestAddress(BUFFERS + 0x1000)).unwrap();
    mem.write_slice(&first[100..], GuestAddress(BUFFERS + 0x2000)).unwrap();
    let first_head = tx.add_chain(&[(BUFFERS, 12, 0), (BUFFERS + 0x1000, 100, 0), (BUFFERS + 0x2000, 200, 0)]);
    // The header split, its end sharing a buffer with the frame.
    let second = test_frame(1500, 2);
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes.extend_from_slice(&second);
    let at = BUFFERS + 0x4000;
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    let second_head = tx.add_chain(&[(at, 5, 0), (at + 5, bytes.len() as u32 - 5, 0)]);

    net.process_tx();
    assert_eq!(host.recv(WAIT).as_deref(), Some(&first[..]));
    assert_eq!(host.recv(WAIT).as_deref(), Some(&second[..]));
    assert_eq!(tx.used(), vec![(first_head, 0), (second_head, 0)]);
    assert!(wiring.take_interrupt());
    let metrics = net.metrics();
    assert_eq!((metrics.tx_frames.get(), metrics.tx_bytes.get()), (2, 1800));
    assert_eq!(metrics.tx_bad_chains.get() + metrics.tx_dropped.get(), 0);

    // Nothing new: no interrupt.
    net.process_tx();
    assert!(!wiring.take_interrupt());
}

#[test]
fn a_received_frame_arrives_behind_a_virtio_net_header() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut net, &mem, &rx, &tx);
    let head = rx.add_chain(&[(BUFFERS, 4096, WRITE)]);

    let frame = test_frame(200, 7);
    host.send(&frame);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 1);

    assert_eq!(rx.used(), vec![(head, 212)]);
    let got = read_guest(&mem, BUFFERS, 212);
    let header = &got[..VNET_HDR_LEN];
    assert_eq!(header[0], 0, "flags");
    assert_eq!(header[1], 0, "gso_type: VIRTIO_NET_HDR_GSO_NONE");
    assert_eq!(num_buffers(header), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
    assert!(wiring.take_interrupt());
    assert_eq!(net.metrics.rx_bytes.get(), 200);
    assert_eq!(net.rx.pending_len, None);
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_chain_big_enough() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES & !feature(VIRTIO_NET_F_MRG_RXBUF));
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    activate(&mut net, &mem, &rx, &tx);
    let head = rx.add_chain(&[(BUFFERS, 40, WRITE), (BUFFERS + 0x100, 60, WRITE)]);

    // 512 bytes with the header: dropped, the chain left for the next.
    host.send(&test_frame(500, 1));
    pump_rx(&mut net, |net| net.metrics.rx_dropped.get() == 1);
    assert!(rx.used().is_empty());

    let small = test_frame(60, 2);
    host.send(&small);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 1);
    assert_eq!(rx.used(), vec![(head, 72)]);
    let mut got = read_guest(&mem, BUFFERS, 40);
    got.extend(read_guest(&mem, BUFFERS + 0x100, 32));
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &small[..]);
}

#[test]
fn a_mergeable_frame_spreads_over_small_buffers() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    activate(&mut net, &mem, &rx, &tx);
    // The first chain splits the header (num_buffers lands in its second
    // buffer); the others are 256 bytes each.
    let mut heads = vec![rx.add_chain(&[(BUFFERS, 5, WRITE), (BUFFERS + 0x100, 251, WRITE)])];
    for i in 1..5 {
        heads.push(rx.add_chain(&[(BUFFERS + i * 0x1000, 256, WRITE)]));
    }

    let frame = test_frame(1000, 3);
    host.send(&frame);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 1);

    // 1012 bytes: 256 + 256 + 256 + 244; the fifth chain stays available.
    assert_eq!(rx.used(), vec![(heads[0], 256), (heads[1], 256), (heads[2], 256), (heads[3], 244)]);
    let mut got = read_guest(&mem, BUFFERS, 5);
    got.extend(read_guest(&mem, BUFFERS + 0x100, 251));
    for (i, len) in [(1, 256), (2, 256), (3, 244)] {
        got.extend(read_guest(&mem, BUFFERS + i * 0x1000, len));
    }
    assert_eq!(num_buffers(&got), 4);
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);

    // The next frame starts in the fifth chain.
    let next = test_frame(100, 4);
    host.send(&next);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 2);
    assert_eq!(rx.used()[4], (heads[4], 112));
    let got = read_guest(&mem, BUFFERS + 4 * 0x1000, 112);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &next[..]);
}

#[test]
fn a_frame_waits_for_receive_buffers_and_is_delivered_when_they_come() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut net, &mem, &rx, &tx);

    let first = test_frame(800, 1);
    let second = test_frame(100, 2);
    host.send(&first);
    host.send(&second);
    pump_rx(&mut net, |net| net.rx.pending_len.is_some());
    assert_eq!(net.rx.pending_len, Some(812));
    assert!(rx.used().is_empty());

    // Not enough room yet (256 of 812 bytes): nothing is taken.
    let mut heads = vec![rx.add_chain(&[(BUFFERS, 256, WRITE)])];
    net.process_rx();
    assert!(rx.used().is_empty());
    assert_eq!(net.rx.pending_len, Some(812));
    assert!(!wiring.take_interrupt());

    for i in 1..4 {
        heads.push(rx.add_chain(&[(BUFFERS + i * 0x1000, 256, WRITE)]));
    }
    // The first frame goes; the second is read and waits in its turn.
    pump_rx(&mut net, |net| net.rx.pending_len == Some(112));
    assert_eq!(rx.used(), vec![(heads[0], 256), (heads[1], 256), (heads[2], 256), (heads[3], 44)]);
    assert!(wiring.take_interrupt());
    let mut got = Vec::new();
    for (i, len) in [(0, 256), (1, 256), (2, 256), (3, 44)] {
        got.extend(read_guest(&mem, BUFFERS + i * 0x1000, len));
    }
    assert_eq!(num_buffers(&got), 4);
    assert_eq!(&got[VNET_HDR_LEN..], &first[..]);

    let last = rx.add_chain(&[(BUFFERS + 0x8000, 2048, WRITE)]);
    net.process_rx();
    assert_eq!(rx.used()[4], (last, 112));
    assert_eq!(&read_guest(&mem, BUFFERS + 0x8000, 112)[VNET_HDR_LEN..], &second[..]);
    assert_eq!(net.rx.pending_len, None);
    assert_eq!(net.metrics.rx_dropped.get(), 0);
}

#[test]
fn rate_limiters_hold_frames_until_their_buckets_refill() {
    const MS: u64 = 1_000_000;
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut config = config(&tap.name);
    // One frame per 100 ms out; 1000 bytes per second in.
    config.tx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig { size: 1, one_time_burst: None, refill_time: 100 }),
    });
    config.rx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig { size: 1000, one_time_burst: None, refill_time: 1000 }),
        ops: None,
    });
    let now = Arc::new(AtomicU64::new(1_000 * MS));
    let advance_to = |ms: u64| now.store((1_000 + ms) * MS, Ordering::SeqCst);
    let mut net = Net::with_clock(&config, Clock::Manual(now.clone())).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let mut tx = Ring::new(&mem, TX_RING);
    activate(&mut net, &mem, &rx, &tx);

    let frames = [test_frame(100, 1), test_frame(100, 2)];
    let mut tx_heads = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let at = BUFFERS + i as u64 * 0x1000;
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(at)).unwrap();
        mem.write_slice(frame, GuestAddress(at + 12)).unwrap();
        tx_heads.push(tx.add_chain(&[(at, 112, 0)]));
    }
    net.process_tx();
    assert_eq!(tx.used(), vec![(tx_heads[0], 0)]);
    assert_eq!(host.recv(WAIT).as_deref(), Some(&frames[0][..]));
    assert_eq!(net.metrics.tx_throttled.get(), 1);
    advance_to(99);
    net.process_tx();
    assert_eq!(tx.used().len(), 1);
    assert_eq!(net.metrics.tx_throttled.get(), 1, "a blocked limiter does not count again");
    advance_to(100);
    net.process_tx();
    assert_eq!(tx.used(), vec![(tx_heads[0], 0), (tx_heads[1], 0)]);
    assert_eq!(host.recv(WAIT).as_deref(), Some(&frames[1][..]));

    // Receive: 600 bytes pass, the next 600 wait for 200 more tokens.
    let rx_heads =
        [rx.add_chain(&[(BUFFERS + 0x10000, 2048, WRITE)]), rx.add_chain(&[(BUFFERS + 0x20000, 2048, WRITE)])];
    host.send(&test_frame(600, 3));
    host.send(&test_frame(600, 4));
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 1 && net.rx.pending_len.is_some());
    assert_eq!(rx.used(), vec![(rx_heads[0], 612)]);
    assert_eq!(net.metrics.rx_throttled.get(), 1);
    advance_to(100 + 199);
    net.process_rx();
    assert_eq!(rx.used().len(), 1);
    advance_to(100 + 200);
    net.process_rx();
    assert_eq!(rx.used(), vec![(rx_heads[0], 612), (rx_heads[1], 612)]);
    assert_eq!(&read_guest(&mem, BUFFERS + 0x20000, 612)[VNET_HDR_LEN..], &test_frame(600, 4)[..]);
}

#[test]
fn hostile_transmit_chains_are_returned_and_counted() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let rx = Ring::new(&mem, RX_RING);
    let mut tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut net, &mem, &rx, &tx);

    let hostile = [
        // Shorter than the header.
        tx.add_chain(&[(BUFFERS, 8, 0)]),
        // A device-writable buffer.
        tx.add_chain(&[(BUFFERS, 12, 0), (BUFFERS + 0x100, 100, WRITE)]),
        // Outside guest memory, and straddling its end.
        tx.add_chain(&[(BUFFERS, 12, 0), (OUTSIDE, 100, 0)]),
        tx.add_chain(&[(BUFFERS, 12, 0), (MEM_SIZE as u64 - 10, 100, 0)]),
        // A frame over the limit.
        tx.add_chain(&[(BUFFERS, 12, 0), (BUFFERS + 0x1000, 70_000, 0)]),
        // Nothing at all.
        tx.add_chain(&[(BUFFERS, 0, 0)]),
        // A descriptor that is its own successor.
        tx.add_linked(BUFFERS, 20, 0, |me| me),
        // A successor past the end of the table.
        tx.add_linked(BUFFERS, 20, 0, |_| 300),
    ];
    let good = test_frame(64, 9);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUFFERS + 0x20000)).unwrap();
    mem.write_slice(&good, GuestAddress(BUFFERS + 0x20000 + 12)).unwrap();
    let good_head = tx.add_chain(&[(BUFFERS + 0x20000, 76, 0)]);

    net.process_tx();
    let mut expected: Vec<_> = hostile.iter().map(|&head| (head, 0)).collect();
    expected.push((good_head, 0));
    assert_eq!(tx.used(), expected);
    assert!(wiring.take_interrupt());
    assert_eq!(net.metrics.tx_bad_chains.get(), hostile.len() as u64);
    assert_eq!(net.metrics.tx_frames.get(), 1);
    assert_eq!(host.recv(WAIT).as_deref(), Some(&good[..]));
    assert_eq!(host.recv(Duration::from_millis(200)), None, "only the good frame reached the TAP");
}

#[test]
fn hostile_receive_chains_are_returned_empty_and_the_frame_goes_on() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut net = Net::new(&config(&tap.name)).unwrap();
    net.ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    activate(&mut net, &mem, &rx, &tx);

    let hostile = [
        rx.add_chain(&[(BUFFERS, 2048, 0)]),
        rx.add_chain(&[(OUTSIDE, 2048, WRITE)]),
        rx.add_chain(&[(BUFFERS, 0, WRITE)]),
        // 256 one-byte turns of a loop hold less than the frame.
        rx.add_linked(BUFFERS, 1, WRITE, |me| me),
    ];
    let good = rx.add_chain(&[(BUFFERS + 0x1000, 4096, WRITE)]);
    let frame = test_frame(300, 5);
    host.send(&frame);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 1);
    let mut expected: Vec<_> = hostile.iter().map(|&head| (head, 0)).collect();
    expected.push((good, 312));
    assert_eq!(rx.used(), expected);
    assert_eq!(net.metrics.rx_bad_chains.get(), hostile.len() as u64);
    assert_eq!(&read_guest(&mem, BUFFERS + 0x1000, 312)[VNET_HDR_LEN..], &frame[..]);

    // A bad chain in the middle of a mergeable frame: the chain filled
    // before it goes back empty, and the frame starts over after it.
    let partial = rx.add_chain(&[(BUFFERS + 0x3000, 100, WRITE)]);
    let bad = rx.add_chain(&[(BUFFERS + 0x4000, 100, 0)]);
    let whole = rx.add_chain(&[(BUFFERS + 0x5000, 4096, WRITE)]);
    host.send(&frame);
    pump_rx(&mut net, |net| net.metrics.rx_frames.get() == 2);
    assert_eq!(rx.used()[5..], [(partial, 0), (bad, 0), (whole, 312)]);
    let got = read_guest(&mem, BUFFERS + 0x5000, 312);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
}

#[test]
fn the_event_loop_watches_what_the_state_needs() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let net = Arc::new(Mutex::new(Net::new(&config(&tap.name)).unwrap()));
    let mut manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    manager.add_subscriber(net.clone());
    let lock = || net.lock().unwrap();
    // Idle: only the state-change eventfd, which is quiet.
    assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
    assert!(!lock().tap_registered);

    lock().ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let mut tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut lock(), &mem, &rx, &tx);
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert!(lock().tap_registered);
    assert!(lock().session.as_ref().unwrap().events_registered);

    // Transmit on a kick.
    let frame = test_frame(80, 1);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUFFERS)).unwrap();
    mem.write_slice(&frame, GuestAddress(BUFFERS + 12)).unwrap();
    tx.add_chain(&[(BUFFERS, 92, 0)]);
    wiring.tx_kick.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(host.recv(WAIT).as_deref(), Some(&frame[..]));

    // No receive buffers: the first frame waits in the device, the TAP is
    // unwatched and nothing spins.
    host.send(&test_frame(100, 2));
    host.send(&test_frame(100, 3));
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert!(lock().rx.pending_len.is_some());
    assert!(!lock().tap_registered);
    assert_eq!(manager.run_with_timeout(100).unwrap(), 0);

    // Buffers and a kick: both frames arrive, the TAP is watched again.
    let heads = [rx.add_chain(&[(BUFFERS + 0x1000, 2048, WRITE)]), rx.add_chain(&[(BUFFERS + 0x2000, 2048, WRITE)])];
    wiring.rx_kick.write(1).unwrap();
    manager.run_with_timeout(1000).unwrap();
    if rx.used().len() < 2 {
        // The second frame was still on its way into the TAP.
        manager.run_with_timeout(1000).unwrap();
    }
    assert_eq!(rx.used(), vec![(heads[0], 112), (heads[1], 112)]);
    assert!(lock().tap_registered);

    // Reset: queues and TAP unwatched; a frame arriving now stays in the
    // TAP and wakes no one.
    lock().reset();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert!(!lock().tap_registered);
    assert!(lock().retired_queue_events.is_empty());
    let waiting = test_frame(90, 4);
    host.send(&waiting);
    wiring.rx_kick.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 0);

    // A new driver session picks it up.
    lock().ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let mut rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    let head = rx.add_chain(&[(BUFFERS, 2048, WRITE)]);
    let wiring = activate(&mut lock(), &mem, &rx, &tx);
    manager.run_with_timeout(1000).unwrap();
    assert_eq!(rx.used(), vec![(head, 102)]);
    assert_eq!(&read_guest(&mem, BUFFERS, 102)[VNET_HDR_LEN..], &waiting[..]);
    assert!(wiring.take_interrupt());
    assert!(lock().tap_registered);
}

#[test]
fn activation_needs_two_queues_once() {
    let tap = TestTap::new();
    let mut net = Net::new(&config(&tap.name)).unwrap();
    let mem = guest_memory();
    let rx = Ring::new(&mem, RX_RING);
    let tx = Ring::new(&mem, TX_RING);
    let one_queue = ActivatedQueues {
        mem: mem.clone(),
        queues: vec![rx.queue()],
        queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    };
    assert!(matches!(net.activate(one_queue), Err(ActivateError::QueueCount { want: 2, got: 1 })));
    assert!(!net.is_active());
    activate(&mut net, &mem, &rx, &tx);
    assert!(net.is_active());
    let again = ActivatedQueues {
        mem: mem.clone(),
        queues: vec![rx.queue(), tx.queue()],
        queue_events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(0).unwrap())),
    };
    assert!(matches!(net.activate(again), Err(ActivateError::AlreadyActive)));
    net.reset();
    assert!(!net.is_active());
}

#[test]
fn identity_features_and_configuration_space() {
    let tap = TestTap::new();
    let mut config = config(&tap.name);
    config.guest_mac = None;
    let mut net = Net::new(&config).unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_eq!(net.tap_name(), tap.name);
    let features = net.device_features();
    for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4] {
        assert_ne!(features & feature(bit), 0, "bit {bit}");
    }
    assert_eq!(features & feature(virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS), 0);
    assert_eq!(features & feature(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ), 0);

    // A generated MAC: local, unicast.
    let mac = net.mac().bytes();
    assert_eq!(mac[0] & 0x03, 0x02);
    let mut data = [0xaa; 6];
    net.read_config(0, &mut data);
    assert_eq!(data, mac);
    let mut data = [0xaa; 4];
    net.read_config(5, &mut data);
    assert_eq!(data, [mac[5], VIRTIO_NET_S_LINK_UP as u8, 0, 0]);
    let mut data = [0xaa; 1];
    net.read_config(u64::MAX, &mut data);
    assert_eq!(data, [0]);
    net.write_config(0, &[0; 6]);
    net.read_config(0, &mut [0; 6]);
    assert_eq!(net.mac().bytes(), mac);

    // The TAP accepts the offloads of every combination.
    for features in [ALL_FEATURES, VIRTIO_F_VERSION_1, ALL_FEATURES & !feature(VIRTIO_NET_F_GUEST_CSUM)] {
        net.ack_features(features);
        assert_eq!(net.acked_features, features);
    }
}

#[test]
fn receive_offloads_follow_the_guest_features() {
    assert_eq!(tap_offload_for(0), 0);
    // Segments without checksum offload make no sense to tun.
    assert_eq!(tap_offload_for(feature(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(tap_offload_for(feature(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
    assert_eq!(tap_offload_for(ALL_FEATURES), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO);
    // Host offloads (guest to host) do not change what the TAP sends.
    assert_eq!(tap_offload_for(feature(VIRTIO_NET_F_HOST_TSO4) | feature(VIRTIO_NET_F_CSUM)), 0);
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    let mut config = config("hsknonexistent");
    let err = Net::new(&config).err().expect("a missing TAP is an error");
    assert!(matches!(err, NetError::Tap { source: TapError::Missing(_), .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("eth0") && message.contains("hsknonexistent"), "{message}");

    config.host_dev_name = "a-name-too-long-for-linux".into();
    let err = Net::new(&config).err().unwrap();
    assert!(matches!(err, NetError::Tap { source: TapError::NameTooLong { .. }, .. }), "{err}");

    config.guest_mac = Some("06:00:ac:10:00".into());
    let err = Net::new(&config).err().unwrap();
    assert!(matches!(err, NetError::Mac { source: MacError::Syntax(_), .. }), "{err}");
    assert!(err.to_string().contains("06:00:ac:10:00"), "{err}");
}

#[test]
fn a_multi_queue_tap_without_vnet_headers_is_refused() {
    // The test's queue stays attached, so the device's queue cannot change
    // the TAP's flags.
    let tap = TestTap::with_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE, false);
    let err = Net::new(&config(&tap.name)).err().unwrap();
    assert!(matches!(err, NetError::Tap { source: TapError::NoVnetHeader(_), .. }), "{err}");
}

#[test]
fn a_single_queue_tap_takes_one_device() {
    let tap = TestTap::with_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR, false);
    let name = tap.name.clone();
    // Persistent, so that it outlives the test's queue, which leaves room
    // for the device's: the way a user's TAP (`ip tuntap add`) is.
    ioctl_value(tap._queue.as_raw_fd(), libc::TUNSETPERSIST, 1, "TUNSETPERSIST");
    drop(tap);
    let first = Net::new(&config(&name));
    let second = Net::new(&config(&name)).map(drop);
    let first = first.map(drop);
    // Delete the TAP before asserting, so a failure leaves nothing behind.
    let queue = OpenOptions::new().read(true).write(true).open("/dev/net/tun").unwrap();
    let mut request = tap::ifreq_with_flags(&name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    ioctl_ifreq(queue.as_raw_fd(), libc::TUNSETIFF, &mut request, "TUNSETIFF");
    ioctl_value(queue.as_raw_fd(), libc::TUNSETPERSIST, 0, "TUNSETPERSIST");
    drop(queue);

    first.unwrap();
    let err = second.unwrap_err();
    assert!(matches!(err, NetError::Tap { source: TapError::Busy(_), .. }), "{err}");
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated name.
    assert_eq!(unsafe { libc::if_nametoindex(c_name.as_ptr()) }, 0, "the TAP is gone");
}

#[test]
fn a_rate_limiter_timer_resumes_transmission_from_the_event_loop() {
    let tap = TestTap::new();
    let host = PacketSocket::bind(tap.ifindex);
    let mut config = config(&tap.name);
    config.tx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig { size: 1, one_time_burst: None, refill_time: 100 }),
    });
    let net = Arc::new(Mutex::new(Net::new(&config).unwrap()));
    let mut manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    manager.add_subscriber(net.clone());
    net.lock().unwrap().ack_features(ALL_FEATURES);
    let mem = guest_memory();
    let rx = Ring::new(&mem, RX_RING);
    let mut tx = Ring::new(&mem, TX_RING);
    let wiring = activate(&mut net.lock().unwrap(), &mem, &rx, &tx);
    manager.run_with_timeout(1000).unwrap();

    let frames = [test_frame(64, 1), test_frame(64, 2)];
    for (i, frame) in frames.iter().enumerate() {
        let at = BUFFERS + i as u64 * 0x1000;
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(at)).unwrap();
        mem.write_slice(frame, GuestAddress(at + 12)).unwrap();
        tx.add_chain(&[(at, 76, 0)]);
    }
    let start = Instant::now();
    wiring.tx_kick.write(1).unwrap();
    manager.run_with_timeout(1000).unwrap();
    assert_eq!(tx.used().len(), 1);
    assert_eq!(host.recv(WAIT).as_deref(), Some(&frames[0][..]));
    // The limiter's timer is the next event, about 100 ms later.
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(tx.used().len(), 2);
    assert!(start.elapsed() >= Duration::from_millis(95), "{:?}", start.elapsed());
    assert_eq!(host.recv(WAIT).as_deref(), Some(&frames[1][..]));
    assert_eq!(net.lock().unwrap().metrics.tx_throttled.get(), 1);
}
