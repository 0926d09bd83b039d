//! virtio-net: the guest's network interface, backed by an existing TAP
//! device on the host, as Firecracker's.
//!
//! The device has two queues, receive (0) and transmit (1), of up to 256
//! entries, and no control queue. It offers the MAC address, checksum and
//! segmentation offloads in both directions, and mergeable receive buffers
//! (Firecracker's feature set); the offloads the guest accepts for receive
//! are passed on to the TAP (TUNSETOFFLOAD), so the host stack hands over
//! only frames the guest can take. Every frame carries a 12-byte
//! `virtio_net_hdr_v1` on both sides (the TAP's IFF_VNET_HDR), so headers
//! pass through unchanged, except `num_buffers`, which the device writes.
//!
//! # Event loop
//!
//! [`Net`] is shared (`Arc<Mutex<Net>>`) between the virtio-mmio transport
//! (vCPU threads) and the VMM's event loop, where it is a
//! `MutEventSubscriber`. `activate` and `reset` only change state and
//! write the device's state-change eventfd; the subscriber then brings its
//! epoll registrations in line with the state:
//!
//! - always: the state-change eventfd and the rate limiters' timerfds;
//! - while active: both queue notification eventfds;
//! - while active, with no received frame waiting for guest buffers and the
//!   TAP usable: the TAP (EPOLLIN, level-triggered).
//!
//! A frame read from the TAP that the guest has no room for (or that the
//! receive rate limiter holds back) is kept, alone, in the device's
//! receive buffer; the TAP is then left out of epoll, so nothing spins,
//! and reception resumes on the next receive-queue notification or
//! limiter timer. The kernel keeps queueing behind it in the TAP's own
//! bounded queue, dropping when that is full, as a NIC without
//! descriptors would.
//!
//! # Wiring
//!
//! Build the device with [`Net::new`] when the interface is configured
//! (it opens the TAP, so configuration errors surface then), put it in an
//! `Arc<Mutex<Net>>`, give that to the virtio-mmio transport as its
//! `VirtioDevice` and to the event manager as a subscriber, register the
//! transport's queue eventfds as KVM ioeventfds, and fold
//! [`Net::metrics`] into the VMM's metrics.
//!
//! # Hostile guests
//!
//! A descriptor chain the device cannot use (too short for the header, a
//! descriptor of the wrong direction, outside guest memory, a frame over
//! [`MAX_FRAME_LEN`], a loop or an out-of-range `next`) is returned to the
//! guest unused (length 0), counted in [`NetMetrics`] and logged at
//! powers of two of the count, and processing goes on with the next chain.

mod mac;
mod rate_limiter;
mod tap;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use husk_api::devices::{NetworkInterfaceConfig, RateLimiterConfig};
use serde::Serialize;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    ActivateError, ActivatedQueues, VirtioDevice, VirtioInterrupt, TYPE_NET, VIRTIO_F_VERSION_1,
};
use crate::metrics::Counter;

pub use mac::{MacAddr, MacError, MAC_LEN};
pub use rate_limiter::{Admission, Clock, RateLimiter, TokenBucket};
pub use tap::{Tap, TapError, MAX_TAP_NAME_LEN};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_MAX_SIZE: u16 = 256;
const QUEUE_MAX_SIZES: [u16; 2] = [QUEUE_MAX_SIZE; 2];

/// `virtio_net_hdr_v1`: the header of every frame with VIRTIO_F_VERSION_1,
/// `num_buffers` included.
pub const VNET_HDR_LEN: usize = 12;
/// Where `num_buffers` (little-endian u16) sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame either way: a 64 KiB segmentation-offload packet
/// behind its Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + 14;
/// Header and largest frame: the receive buffer, and the limit of a
/// transmit chain (Firecracker's 65562).
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// writev's limit (UIO_MAXIOV); a Linux guest uses at most a few dozen.
const MAX_TX_SEGMENTS: usize = 1024;
/// Frames read from the TAP per event before the event loop serves
/// others; the TAP being level-triggered, the rest is read on the next
/// round.
const RX_FRAMES_PER_EVENT: usize = 256;

const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// What the device offers (the transport adds VIRTIO_F_VERSION_1).
pub const OFFERED_FEATURES: u64 = feature(VIRTIO_NET_F_MAC)
    | feature(VIRTIO_NET_F_CSUM)
    | feature(VIRTIO_NET_F_GUEST_CSUM)
    | feature(VIRTIO_NET_F_GUEST_TSO4)
    | feature(VIRTIO_NET_F_GUEST_TSO6)
    | feature(VIRTIO_NET_F_GUEST_UFO)
    | feature(VIRTIO_NET_F_HOST_TSO4)
    | feature(VIRTIO_NET_F_HOST_TSO6)
    | feature(VIRTIO_NET_F_HOST_UFO)
    | feature(VIRTIO_NET_F_MRG_RXBUF);

/// Configuration space: `mac`, then `status`. VIRTIO_NET_F_STATUS is not
/// offered (as Firecracker: the link never goes down), so a driver does
/// not read `status`; it reads LINK_UP anyway, which is true.
const CONFIG_SPACE_LEN: usize = MAC_LEN + 2;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface {iface_id:?}: {source}")]
    Mac { iface_id: String, source: MacError },
    #[error("network interface {iface_id:?}: {source}")]
    Tap { iface_id: String, source: TapError },
    #[error("network interface {iface_id:?}: {what}: {source}")]
    Setup { iface_id: String, what: &'static str, source: io::Error },
}

/// The device's counters; the VMM folds them into its metrics.
#[derive(Default, Serialize)]
pub struct NetMetrics {
    /// Frames (and their bytes, headers excluded) given to the guest.
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    /// Frames (and bytes, headers excluded) the TAP took from the guest.
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames from the TAP the guest never got: larger than its buffers
    /// or than the device's, or a TAP read error.
    pub rx_dropped: Counter,
    /// Frames the TAP refused (a write error).
    pub tx_dropped: Counter,
    /// Descriptor chains returned unused because they were malformed.
    pub rx_bad_chains: Counter,
    pub tx_bad_chains: Counter,
    /// Times a rate limiter blocked a direction.
    pub rx_throttled: Counter,
    pub tx_throttled: Counter,
}

/// Why a descriptor chain was returned unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadChain {
    /// A transmit chain shorter than the virtio-net header.
    TooShort { len: usize },
    /// A transmit chain over [`MAX_BUFFER_LEN`].
    TooLong,
    /// More than writev takes.
    TooManySegments,
    /// A device-writable descriptor in a transmit chain, or a
    /// device-readable one in a receive chain.
    WrongDirection,
    /// A descriptor (partly) outside guest memory.
    OutsideMemory { addr: u64, len: u32 },
    /// A receive chain without a byte of room.
    NoRoom,
    /// The chain ended on a descriptor that still points further: a loop,
    /// an out-of-range `next` or an unreadable descriptor.
    Truncated,
}

impl fmt::Display for BadChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadChain::TooShort { len } => write!(f, "{len} bytes, shorter than the {VNET_HDR_LEN}-byte header"),
            BadChain::TooLong => write!(f, "longer than {MAX_BUFFER_LEN} bytes"),
            BadChain::TooManySegments => write!(f, "more than {MAX_TX_SEGMENTS} segments"),
            BadChain::WrongDirection => write!(f, "a descriptor has the wrong direction"),
            BadChain::OutsideMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len:#x} is outside guest memory")
            }
            BadChain::NoRoom => write!(f, "no writable byte"),
            BadChain::Truncated => write!(f, "a descriptor loop or an invalid next index"),
        }
    }
}

/// What a driver handed over with DRIVER_OK; dropped on reset.
struct Session {
    mem: Arc<GuestMemoryMmap>,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_event: EventFd,
    tx_event: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    /// Whether the subscriber has added the queue eventfds to epoll.
    events_registered: bool,
}

impl Session {
    fn signal_used(&self, iface_id: &str) {
        if let Err(err) = self.interrupt.signal_used_queue() {
            tracing::error!("network interface {iface_id}: raising the interrupt: {err}");
        }
    }
}

/// The iovecs of the frame being sent. They point into guest memory only
/// between filling and the writev, inside one call; the vector is emptied
/// right after.
struct TxIovecs(Vec<libc::iovec>);

// SAFETY: the pointers are only used (by writev) during the call that
// stored them, on that thread; the vector holds none between calls.
unsafe impl Send for TxIovecs {}

struct RxPath {
    /// One frame, header included, as read from the TAP.
    frame: Box<[u8]>,
    /// Length of the frame in `frame` still to be given to the guest.
    pending_len: Option<usize>,
    /// The chains taken for the frame being delivered: head and length.
    chains: Vec<(u16, u32)>,
    limiter: Option<RateLimiter>,
}

struct TxPath {
    iovecs: TxIovecs,
    limiter: Option<RateLimiter>,
}

/// The outcome of offering the pending frame to the receive queue.
enum Delivery {
    Delivered,
    /// Not enough buffers yet; nothing was taken from the queue.
    NoRoom,
    /// The frame can never fit; it is dropped.
    Dropped(&'static str),
}

/// A virtio-net device on a TAP device.
pub struct Net {
    iface_id: String,
    mac: MacAddr,
    tap: Tap,
    acked_features: u64,
    /// Written by `activate` and `reset` to wake the subscriber.
    state_change: EventFd,
    session: Option<Session>,
    /// Queue eventfds of reset sessions, still in epoll: kept open until
    /// the subscriber has removed them, so their numbers cannot be reused
    /// by a new fd meanwhile.
    retired_queue_events: Vec<EventFd>,
    tap_registered: bool,
    /// A fatal TAP read error happened (the TAP was deleted): reception
    /// has stopped.
    tap_failed: bool,
    rx: RxPath,
    tx: TxPath,
    clock: Clock,
    metrics: Arc<NetMetrics>,
}

impl Net {
    /// Opens the TAP device and prepares the device; nothing runs until the
    /// driver activates it.
    pub fn new(config: &NetworkInterfaceConfig) -> Result<Net, NetError> {
        Self::with_clock(config, Clock::monotonic())
    }

    fn with_clock(config: &NetworkInterfaceConfig, clock: Clock) -> Result<Net, NetError> {
        Self::with_tap(config, || Tap::open(&config.host_dev_name, VNET_HDR_LEN), clock)
    }

    /// A device on a stand-in for the TAP: any file that keeps frame
    /// boundaries (one end of a `SOCK_SEQPACKET` socket pair), so the fuzz
    /// targets run the queue code without a TAP device or privileges.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn with_backend(config: &NetworkInterfaceConfig, backend: std::fs::File) -> Result<Net, NetError> {
        Self::with_tap(config, || Ok(Tap::from_file(backend, &config.host_dev_name)), Clock::monotonic())
    }

    /// The TAP is opened (`open_tap`) once the rest of the configuration
    /// is known to be good.
    fn with_tap(
        config: &NetworkInterfaceConfig,
        open_tap: impl FnOnce() -> Result<Tap, TapError>,
        clock: Clock,
    ) -> Result<Net, NetError> {
        let iface_id = config.iface_id.clone();
        let setup = |what: &'static str| {
            let iface_id = iface_id.clone();
            move |source: io::Error| NetError::Setup { iface_id, what, source }
        };
        let mac = match &config.guest_mac {
            Some(text) => {
                MacAddr::parse(text).map_err(|source| NetError::Mac { iface_id: iface_id.clone(), source })?
            }
            None => MacAddr::random().map_err(setup("generating a MAC address"))?,
        };
        let tap = open_tap().map_err(|source| NetError::Tap { iface_id: iface_id.clone(), source })?;
        let now = clock.now_ns();
        let limiter = |config: Option<&RateLimiterConfig>| {
            config
                .map(|config| RateLimiter::from_config(config, now))
                .transpose()
                .map(Option::flatten)
                .map_err(setup("creating a rate limiter timer"))
        };
        let rx_limiter = limiter(config.rx_rate_limiter.as_ref())?;
        let tx_limiter = limiter(config.tx_rate_limiter.as_ref())?;
        let state_change = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("creating an eventfd"))?;
        Ok(Net {
            iface_id,
            mac,
            tap,
            acked_features: 0,
            state_change,
            session: None,
            retired_queue_events: Vec::new(),
            tap_registered: false,
            tap_failed: false,
            rx: RxPath {
                frame: vec![0u8; MAX_BUFFER_LEN].into_boxed_slice(),
                pending_len: None,
                chains: Vec::with_capacity(usize::from(QUEUE_MAX_SIZE)),
                limiter: rx_limiter,
            },
            // Enough for any frame a Linux guest sends (MAX_SKB_FRAGS
            // plus header and linear part); grows only for odd layouts.
            tx: TxPath { iovecs: TxIovecs(Vec::with_capacity(64)), limiter: tx_limiter },
            clock,
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.session.is_some()
    }

    fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & feature(bit) != 0
    }

    fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut config = [0u8; CONFIG_SPACE_LEN];
        config[..MAC_LEN].copy_from_slice(&self.mac.bytes());
        config[MAC_LEN..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }

    fn wake_subscriber(&self) {
        if let Err(err) = self.state_change.write(1) {
            tracing::error!("network interface {}: waking the event loop: {err}", self.iface_id);
        }
    }

    /// Counts a malformed chain, logging the 1st, 2nd, 4th, 8th… so a
    /// guest cannot flood the log.
    fn note_bad_chain(counter: &Counter, iface_id: &str, queue: &str, bad: BadChain) {
        counter.inc();
        let count = counter.get();
        if count.is_power_of_two() {
            tracing::warn!("network interface {iface_id}: {queue} chain ignored ({count} so far): {bad}");
        }
    }

    /// Sends every frame the guest queued, as far as the transmit rate
    /// limiter allows.
    fn process_tx(&mut self) {
        let Some(session) = self.session.as_mut() else { return };
        let mut used_any = false;
        while let Some(chain) = session.tx_queue.pop_descriptor_chain(&*session.mem) {
            let head = chain.head_index();
            let iovecs = &mut self.tx.iovecs.0;
            iovecs.clear();
            let len = match gather_tx_chain(chain, &session.mem, iovecs) {
                Ok(len) => len,
                Err(bad) => {
                    Self::note_bad_chain(&self.metrics.tx_bad_chains, &self.iface_id, "transmit", bad);
                    return_chain(&mut session.tx_queue, &session.mem, head, 0, &self.iface_id);
                    used_any = true;
                    continue;
                }
            };
            let frame_len = (len - VNET_HDR_LEN) as u64;
            if let Some(limiter) = self.tx.limiter.as_mut() {
                match limiter.admit(frame_len, self.clock.now_ns()) {
                    Admission::Admitted => {}
                    admission => {
                        if admission == Admission::Throttled {
                            self.metrics.tx_throttled.inc();
                        }
                        // Left in the queue for when the limiter's timer fires.
                        session.tx_queue.go_to_previous_position();
                        break;
                    }
                }
            }
            // SAFETY: the iovecs point into regions of `session.mem`, which
            // stays mapped for the call.
            match unsafe { self.tap.writev(iovecs) } {
                Ok(_) => {
                    self.metrics.tx_frames.inc();
                    self.metrics.tx_bytes.add(frame_len);
                }
                Err(err) => {
                    self.metrics.tx_dropped.inc();
                    let count = self.metrics.tx_dropped.get();
                    if count.is_power_of_two() {
                        tracing::warn!(
                            "network interface {}: TAP {} refused a frame ({count} so far): {err}",
                            self.iface_id,
                            self.tap.name()
                        );
                    }
                }
            }
            if let Some(limiter) = self.tx.limiter.as_mut() {
                limiter.consume(frame_len, self.clock.now_ns());
            }
            return_chain(&mut session.tx_queue, &session.mem, head, 0, &self.iface_id);
            used_any = true;
        }
        self.tx.iovecs.0.clear();
        if used_any {
            session.signal_used(&self.iface_id);
        }
    }

    /// Moves frames from the TAP to the guest until the TAP is empty, the
    /// guest is out of buffers, the receive limiter blocks, or a batch is
    /// done.
    fn process_rx(&mut self) {
        let mergeable = self.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let guest_csum = self.has_feature(VIRTIO_NET_F_GUEST_CSUM);
        let Some(session) = self.session.as_mut() else { return };
        let mut used_any = false;
        for _ in 0..RX_FRAMES_PER_EVENT {
            let len = match self.rx.pending_len {
                Some(len) => len,
                None if self.tap_failed => break,
                None => match self.tap.read(&mut self.rx.frame) {
                    Ok(len) if (VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&len) => {
                        if !guest_csum {
                            // The checksum flags are only the guest's
                            // business when it negotiated them.
                            self.rx.frame[0] = 0;
                        }
                        self.rx.pending_len = Some(len);
                        len
                    }
                    Ok(len) if len > MAX_BUFFER_LEN => {
                        // tun reports a frame longer than the buffer with
                        // its full length, having copied what fits.
                        note_rx_drop(
                            &self.metrics,
                            &self.iface_id,
                            format_args!("a {len}-byte frame does not fit the {MAX_BUFFER_LEN}-byte buffer"),
                        );
                        continue;
                    }
                    Ok(len) => {
                        note_rx_drop(
                            &self.metrics,
                            &self.iface_id,
                            format_args!("a {len}-byte read is shorter than the header"),
                        );
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) if matches!(err.raw_os_error(), Some(libc::EFAULT | libc::EINVAL | libc::EMSGSIZE)) => {
                        note_rx_drop(&self.metrics, &self.iface_id, format_args!("reading a frame: {err}"));
                        continue;
                    }
                    Err(err) => {
                        tracing::error!(
                            "network interface {}: reading TAP {}: {err}; reception stops",
                            self.iface_id,
                            self.tap.name()
                        );
                        self.metrics.rx_dropped.inc();
                        self.tap_failed = true;
                        break;
                    }
                },
            };
            let frame_len = (len - VNET_HDR_LEN) as u64;
            if let Some(limiter) = self.rx.limiter.as_mut() {
                match limiter.admit(frame_len, self.clock.now_ns()) {
                    Admission::Admitted => {}
                    admission => {
                        if admission == Admission::Throttled {
                            self.metrics.rx_throttled.inc();
                        }
                        break;
                    }
                }
            }
            let delivery = deliver_frame(
                session,
                &self.iface_id,
                &self.rx.frame[..len],
                mergeable,
                &mut self.rx.chains,
                &mut used_any,
                |bad| Self::note_bad_chain(&self.metrics.rx_bad_chains, &self.iface_id, "receive", bad),
            );
            match delivery {
                Delivery::Delivered => {
                    self.rx.pending_len = None;
                    self.metrics.rx_frames.inc();
                    self.metrics.rx_bytes.add(frame_len);
                    if let Some(limiter) = self.rx.limiter.as_mut() {
                        limiter.consume(frame_len, self.clock.now_ns());
                    }
                }
                Delivery::NoRoom => break,
                Delivery::Dropped(why) => {
                    self.rx.pending_len = None;
                    note_rx_drop(&self.metrics, &self.iface_id, why);
                }
            }
        }
        if used_any {
            session.signal_used(&self.iface_id);
        }
    }

    /// Brings the epoll registrations in line with the state (see the
    /// module documentation).
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for event in self.retired_queue_events.drain(..) {
            if let Err(err) = ops.remove(Events::new(&event, EventSet::IN)) {
                tracing::debug!("network interface {}: removing a queue eventfd: {err:?}", self.iface_id);
            }
        }
        if let Some(session) = self.session.as_mut() {
            if !session.events_registered {
                for event in [&session.rx_event, &session.tx_event] {
                    if let Err(err) = ops.add(Events::new(event, EventSet::IN)) {
                        tracing::error!("network interface {}: watching a queue eventfd: {err:?}", self.iface_id);
                    }
                }
                session.events_registered = true;
            }
        }
        let want_tap = self.session.is_some() && self.rx.pending_len.is_none() && !self.tap_failed;
        if want_tap != self.tap_registered {
            let events = Events::new(&self.tap, EventSet::IN);
            let result = if want_tap { ops.add(events) } else { ops.remove(events) };
            match result {
                Ok(()) => self.tap_registered = want_tap,
                Err(err) => tracing::error!(
                    "network interface {}: {} TAP {}: {err:?}",
                    self.iface_id,
                    if want_tap { "watching" } else { "unwatching" },
                    self.tap.name()
                ),
            }
        }
    }

    fn limiter_fd(limiter: &Option<RateLimiter>) -> Option<RawFd> {
        limiter.as_ref().map(AsRawFd::as_raw_fd)
    }
}

/// Counts a frame from the TAP the guest will not get, logging at powers
/// of two of the count.
fn note_rx_drop(metrics: &NetMetrics, iface_id: &str, why: impl fmt::Display) {
    metrics.rx_dropped.inc();
    let count = metrics.rx_dropped.get();
    if count.is_power_of_two() {
        tracing::warn!("network interface {iface_id}: frame dropped ({count} so far): {why}");
    }
}

/// Returns a chain to the guest with `len` bytes written into it.
fn return_chain(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32, iface_id: &str) {
    if let Err(err) = queue.add_used(mem, head, len) {
        tracing::error!("network interface {iface_id}: returning descriptor {head}: {err}");
    }
}

/// Collects a transmit chain's buffers as iovecs over guest memory and
/// returns its length, header included.
fn gather_tx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<usize, BadChain> {
    let mut total = 0usize;
    let mut points_further = false;
    for desc in chain {
        points_further = desc.has_next();
        if desc.is_write_only() {
            return Err(BadChain::WrongDirection);
        }
        let len = desc.len() as usize;
        total += len;
        if total > MAX_BUFFER_LEN {
            return Err(BadChain::TooLong);
        }
        let outside = || BadChain::OutsideMemory { addr: desc.addr().raw_value(), len: desc.len() };
        // A buffer may span guest memory regions, hence several slices.
        for slice in mem.get_slices(desc.addr(), len) {
            let slice = slice.map_err(|_| outside())?;
            if iovecs.len() == MAX_TX_SEGMENTS {
                return Err(BadChain::TooManySegments);
            }
            iovecs
                .push(libc::iovec { iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void, iov_len: slice.len() });
        }
    }
    if points_further {
        return Err(BadChain::Truncated);
    }
    if total < VNET_HDR_LEN {
        return Err(BadChain::TooShort { len: total });
    }
    Ok(total)
}

/// Writes `frame[start..]` into a receive chain, as much as fits, and
/// returns how much it wrote. Notes where the bytes of `num_buffers` land,
/// to patch them once the number of chains is known.
fn fill_rx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    start: usize,
    num_buffers_at: &mut [Option<GuestAddress>; 2],
) -> Result<usize, BadChain> {
    let mut offset = start;
    let mut points_further = false;
    for desc in chain {
        if offset == frame.len() {
            // The rest of the chain is not needed.
            return Ok(offset - start);
        }
        points_further = desc.has_next();
        if !desc.is_write_only() {
            return Err(BadChain::WrongDirection);
        }
        let len = (desc.len() as usize).min(frame.len() - offset);
        if len == 0 {
            continue;
        }
        mem.write_slice(&frame[offset..offset + len], desc.addr())
            .map_err(|_| BadChain::OutsideMemory { addr: desc.addr().raw_value(), len: desc.len() })?;
        for (at, position) in num_buffers_at.iter_mut().zip(NUM_BUFFERS_OFFSET..) {
            if (offset..offset + len).contains(&position) {
                *at = desc.addr().checked_add((position - offset) as u64);
            }
        }
        offset += len;
    }
    if points_further {
        return Err(BadChain::Truncated);
    }
    if offset == start {
        return Err(BadChain::NoRoom);
    }
    Ok(offset - start)
}

/// Gives `frame` (header included) to the guest: in one chain, or, with
/// mergeable buffers, spread over as many as it takes, with `num_buffers`
/// saying how many. Chains are only returned once the whole frame is
/// written; when the queue runs out first, the chains taken go back to the
/// available ring untouched (as far as the guest can tell).
fn deliver_frame(
    session: &mut Session,
    iface_id: &str,
    frame: &[u8],
    mergeable: bool,
    chains: &mut Vec<(u16, u32)>,
    used_any: &mut bool,
    mut note_bad_chain: impl FnMut(BadChain),
) -> Delivery {
    chains.clear();
    let mut written = 0;
    let mut num_buffers_at = [None; 2];
    while written < frame.len() {
        let Some(chain) = session.rx_queue.pop_descriptor_chain(&*session.mem) else {
            for _ in 0..chains.len() {
                session.rx_queue.go_to_previous_position();
            }
            if chains.len() >= usize::from(session.rx_queue.size()) {
                // All the buffers the queue can hold are too few: more
                // can never come.
                return Delivery::Dropped("larger than all the receive buffers of the queue");
            }
            return Delivery::NoRoom;
        };
        let head = chain.head_index();
        match fill_rx_chain(chain, &session.mem, frame, written, &mut num_buffers_at) {
            Ok(len) => {
                chains.push((head, len as u32));
                written += len;
            }
            Err(bad) => {
                note_bad_chain(bad);
                // Chains already filled for this frame cannot be given
                // back to the available ring past the bad one: they go to
                // the guest empty, which a driver takes as a runt frame,
                // and the frame starts over in the next chains.
                for &(taken, _) in chains.iter() {
                    return_chain(&mut session.rx_queue, &session.mem, taken, 0, iface_id);
                }
                return_chain(&mut session.rx_queue, &session.mem, head, 0, iface_id);
                *used_any = true;
                chains.clear();
                written = 0;
                num_buffers_at = [None; 2];
                continue;
            }
        }
        if !mergeable && written < frame.len() {
            session.rx_queue.go_to_previous_position();
            return Delivery::Dropped("larger than the receive buffer");
        }
    }
    // At most the queue size (256) chains.
    let num_buffers = chains.len() as u16;
    for (at, byte) in num_buffers_at.iter().zip(num_buffers.to_le_bytes()) {
        if let Some(addr) = at {
            // Written a moment ago, so inside guest memory.
            let _ = session.mem.write_obj(byte, *addr);
        }
    }
    for &(head, len) in chains.iter() {
        return_chain(&mut session.rx_queue, &session.mem, head, len, iface_id);
    }
    *used_any = true;
    Delivery::Delivered
}

/// The TAP offloads (`TUN_F_*`) matching the receive features the guest
/// accepted.
fn tap_offload_for(features: u64) -> libc::c_uint {
    // Without checksum offload a guest takes neither partially checksummed
    // frames nor segments (TSO depends on it, and so does tun).
    if features & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if features & feature(bit) != 0 {
            flags |= flag;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn device_features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & (OFFERED_FEATURES | VIRTIO_F_VERSION_1);
        let offload = tap_offload_for(self.acked_features);
        if let Err(err) = self.tap.set_offload(offload) {
            // Then the TAP keeps to complete, unsegmented frames, which
            // every guest takes.
            tracing::warn!("network interface {}: {err}; receive offloads stay off", self.iface_id);
            if let Err(err) = self.tap.set_offload(0) {
                tracing::error!("network interface {}: {err}", self.iface_id);
            }
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|offset| offset.checked_add(i));
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
        tracing::debug!(
            "network interface {}: config write at {offset:#x} ({} bytes) ignored",
            self.iface_id,
            data.len()
        );
    }

    fn activate(&mut self, queues: ActivatedQueues) -> Result<(), ActivateError> {
        if self.session.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivatedQueues { mem, queues, queue_events, interrupt } = queues;
        let got = queues.len().min(queue_events.len());
        let (Ok([rx_queue, tx_queue]), Ok([rx_event, tx_event])) =
            (<[Queue; 2]>::try_from(queues), <[EventFd; 2]>::try_from(queue_events))
        else {
            return Err(ActivateError::QueueCount { want: 2, got });
        };
        self.session =
            Some(Session { mem, rx_queue, tx_queue, rx_event, tx_event, interrupt, events_registered: false });
        self.wake_subscriber();
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(session) = self.session.take() {
            if session.events_registered {
                self.retired_queue_events.extend([session.rx_event, session.tx_event]);
            }
        }
        self.rx.pending_len = None;
        self.acked_features = 0;
        if let Err(err) = self.tap.set_offload(0) {
            tracing::warn!("network interface {}: {err}", self.iface_id);
        }
        self.wake_subscriber();
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            Some(self.state_change.as_raw_fd()),
            Self::limiter_fd(&self.rx.limiter),
            Self::limiter_fd(&self.tx.limiter),
        ];
        for fd in fds.into_iter().flatten() {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("network interface {}: watching fd {fd}: {err:?}", self.iface_id);
            }
        }
        self.sync_registrations(ops);
        // Activated before the subscriber joined the loop: catch up.
        self.process_tx();
        self.process_rx();
        self.sync_registrations(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let queue_events = self.session.as_ref().map(|s| (s.rx_event.as_raw_fd(), s.tx_event.as_raw_fd()));
        if fd == self.state_change.as_raw_fd() {
            let _ = self.state_change.read();
            // The guest may have queued frames and buffers before
            // DRIVER_OK; without a notification to come, look now.
            self.sync_registrations(ops);
            self.process_tx();
            self.process_rx();
        } else if queue_events.is_some_and(|(rx, _)| rx == fd) {
            if let Some(session) = &self.session {
                let _ = session.rx_event.read();
            }
            self.process_rx();
        } else if queue_events.is_some_and(|(_, tx)| tx == fd) {
            if let Some(session) = &self.session {
                let _ = session.tx_event.read();
            }
            self.process_tx();
        } else if fd == self.tap.as_raw_fd() {
            self.process_rx();
        } else if Self::limiter_fd(&self.rx.limiter) == Some(fd) {
            if let Some(limiter) = self.rx.limiter.as_mut() {
                limiter.on_timer();
            }
            self.process_rx();
        } else if Self::limiter_fd(&self.tx.limiter) == Some(fd) {
            if let Some(limiter) = self.tx.limiter.as_mut() {
                limiter.on_timer();
            }
            self.process_tx();
        } else {
            // A queue eventfd of a session reset since epoll reported it;
            // the sync below removes it.
            tracing::debug!("network interface {}: event on retired fd {fd}", self.iface_id);
        }
        self.sync_registrations(ops);
    }
}
