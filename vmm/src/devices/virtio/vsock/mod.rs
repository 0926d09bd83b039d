//! virtio-vsock (virtio 1.2, section 5.10) in Firecracker's hybrid design:
//! guest AF_VSOCK stream sockets meet host Unix sockets.
//!
//! - A guest connection to host port P is forwarded to the Unix socket
//!   `<uds_path>_P`, which a host service listens on.
//! - A host process connects to `<uds_path>`, sends `CONNECT <port>\n` and,
//!   once the guest accepted, reads `OK <host_port>\n`; the stream then
//!   carries the connection's data.
//!
//! [`Vsock`] is the device (queues, configuration space) and the event-loop
//! subscriber; the muxer (`muxer.rs`) keeps the connections
//! (`connection.rs`); `packet.rs` reads and writes packets in guest
//! buffers. Everything the guest puts in a queue is untrusted: a malformed
//! packet is consumed, counted in [`VsockMetrics::bad_packets`] and
//! logged (rate-limited), and the device goes on.
//!
//! Event-loop registrations: `init` adds the activation eventfd, the host
//! listener, the muxer's epoll fd (every host stream, see `muxer.rs`) and
//! its timerfd; these stay for the device's life. The three queue
//! eventfds are added when the subscriber sees an activation and removed
//! after a reset: `reset` runs on a vCPU thread without `EventOps`, so it
//! keeps the old eventfds open (their numbers cannot be reused meanwhile)
//! and wakes the subscriber, which removes and then closes them.

mod connection;
mod muxer;
mod packet;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use husk_api::devices::VsockConfig;
use serde::Serialize;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::muxer::{connect_nonblocking, Muxer};
use self::packet::{ChainError, GuestBuffers, Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_RW};
use super::{ActivateError, ActivatedQueues, VirtioDevice, VirtioInterrupt, TYPE_VSOCK};
use crate::metrics::Counter;

/// Queue order (virtio 1.2, 5.10.2).
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// RX, TX and the event queue (2). The device never sends an event (they
/// are for live migration), so the event queue's buffers stay unused.
const QUEUE_COUNT: usize = 3;
const QUEUE_MAX_SIZES: [u16; QUEUE_COUNT] = [256; QUEUE_COUNT];

/// Chains handled per queue per wake-up. A guest that keeps its queues
/// full cannot hold the event loop (and the API, other devices) longer:
/// past the budget the device re-notifies itself and yields.
const QUEUE_BUDGET: usize = 256;

/// Host connections accepted per wake-up, for the same reason.
const ACCEPT_BATCH: usize = 16;

/// After an accept error that would repeat (EMFILE, ENFILE, ENOMEM) the
/// listener is left unwatched this long instead of spinning on it.
const LISTENER_RETRY: Duration = Duration::from_secs(1);

/// The device's counters, shared with whoever reports them.
#[derive(Default, Serialize)]
pub struct VsockMetrics {
    /// Packets, and their payload bytes, delivered to the guest.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Packets, and their payload bytes, taken from the guest.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Guest packets or buffers that were malformed or unsupported:
    /// consumed and dropped, or answered with an RST.
    pub bad_packets: Counter,
    /// Connections established, either way.
    pub connections_opened: Counter,
    /// Connections not established: no host listener, limits, a host
    /// client without a valid `CONNECT` line, the guest's RST or silence.
    pub connections_refused: Counter,
    /// RSTs for the guest dropped because it was not taking RX buffers.
    pub lost_resets: Counter,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("invalid vsock configuration: {0}")]
    InvalidConfig(String),
    #[error("{path}: another process is serving a socket there")]
    InUse { path: String },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: String },
    #[error("{path}: {what}: {source}")]
    Path { path: String, what: &'static str, source: std::io::Error },
    #[error("vsock setup: {what}: {source}")]
    Setup { what: &'static str, source: std::io::Error },
}

/// Why a guest packet or buffer was refused.
#[derive(Debug, thiserror::Error)]
enum BadPacket {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the chain holds {0} bytes, less than a packet header")]
    ShortChain(usize),
    #[error("reading the header: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("payload length {0} is above the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u32),
    #[error("payload length {len} is beyond the chain's {room} bytes after the header")]
    PayloadBeyondChain { len: u32, room: usize },
    #[error("source CID {0} is not the guest's")]
    WrongSourceCid(u64),
    #[error("destination CID {0} is not the host's")]
    WrongDestinationCid(u64),
}

struct ActiveQueues {
    mem: Arc<GuestMemoryMmap>,
    queues: [Queue; QUEUE_COUNT],
    interrupt: Arc<VirtioInterrupt>,
}

struct QueueEvent {
    fd: EventFd,
    /// Added to the event loop.
    registered: bool,
}

/// The virtio-vsock device. Shared as `Arc<Mutex<Vsock>>` by the transport
/// (a vCPU thread) and the event loop; see the module documentation.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file bound, so that Drop removes that
    /// file and not one another process put there since.
    socket_file: (u64, u64),
    /// Set while the listener is out of the event loop after an accept
    /// error.
    listener_paused_until: Option<Instant>,
    activate_evt: EventFd,
    active: Option<ActiveQueues>,
    queue_events: Vec<QueueEvent>,
    /// Queue eventfds of a session reset on a vCPU thread, still in the
    /// event loop until the subscriber removes them.
    retired_queue_events: Vec<EventFd>,
    muxer: Muxer,
    /// Scratch for the chain being handled, reused for every packet.
    tx_buffers: GuestBuffers,
    rx_buffers: GuestBuffers,
    /// TX processing paused with chains left because the RST backlog is
    /// full; resumed once the guest takes RX buffers.
    tx_stalled: bool,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// Validates `config` and binds the host socket at `uds_path`. A socket
    /// file already there is replaced if nothing serves it (a stale one
    /// from an earlier run); a live socket or any other file is an error.
    pub fn new(config: &VsockConfig) -> Result<Vsock, VsockError> {
        config.validate().map_err(VsockError::InvalidConfig)?;
        let path_error = |what: &'static str| {
            let path = config.uds_path.clone();
            move |source| VsockError::Path { path, what, source }
        };
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| VsockError::Setup { what: "creating the activation eventfd", source })?;
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::new(config.guest_cid, &config.uds_path, metrics.clone())
            .map_err(|source| VsockError::Setup { what: "creating the connection epoll set and timer", source })?;

        let uds_path = PathBuf::from(&config.uds_path);
        remove_stale_socket(&uds_path, &config.uds_path)?;
        let listener = UnixListener::bind(&uds_path).map_err(path_error("binding the host socket"))?;
        let socket_file = match std::fs::symlink_metadata(&uds_path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(source) => {
                let _ = std::fs::remove_file(&uds_path);
                return Err(VsockError::Path {
                    path: config.uds_path.clone(),
                    what: "inspecting the bound socket",
                    source,
                });
            }
        };
        if let Err(source) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(&uds_path);
            return Err(VsockError::Setup { what: "making the host socket non-blocking", source });
        }
        Ok(Vsock {
            guest_cid: config.guest_cid,
            uds_path,
            listener,
            socket_file,
            listener_paused_until: None,
            activate_evt,
            active: None,
            queue_events: Vec::new(),
            retired_queue_events: Vec::new(),
            muxer,
            tx_buffers: GuestBuffers::default(),
            rx_buffers: GuestBuffers::default(),
            tx_stalled: false,
            metrics,
        })
    }

    /// The device's counters; they stay valid after the device is gone.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The subscriber saw an activation or a reset: the event loop's queue
    /// registrations catch up with the device's state.
    fn on_activation_event(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        for evt in self.retired_queue_events.drain(..) {
            if let Err(err) = ops.remove(Events::new(&evt, EventSet::IN)) {
                tracing::warn!("vsock: removing a queue eventfd from the event loop: {err:?}");
            }
        }
        if self.active.is_none() {
            return;
        }
        for (index, event) in self.queue_events.iter_mut().enumerate() {
            if event.registered {
                continue;
            }
            match ops.add(Events::new(&event.fd, EventSet::IN)) {
                Ok(()) => event.registered = true,
                Err(err) => tracing::error!("vsock: watching queue {index}: {err:?}"),
            }
        }
    }

    fn accept_host_connections(&mut self, ops: &mut EventOps, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => match stream.set_nonblocking(true) {
                    Ok(()) => self.muxer.accept(stream, now),
                    Err(err) => tracing::warn!("vsock: making a host connection non-blocking: {err}"),
                },
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if matches!(err.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(err) => {
                    tracing::warn!("vsock: accepting a host connection: {err}; retrying in {LISTENER_RETRY:?}");
                    match ops.remove(Events::new(&self.listener, EventSet::IN)) {
                        Ok(()) => {
                            let until = now + LISTENER_RETRY;
                            self.listener_paused_until = Some(until);
                            self.muxer.schedule(until);
                        }
                        Err(err) => tracing::error!("vsock: pausing the host socket: {err:?}"),
                    }
                    return;
                }
            }
        }
    }

    fn resume_listener_if_due(&mut self, ops: &mut EventOps, now: Instant) {
        let Some(until) = self.listener_paused_until else { return };
        if until > now {
            self.muxer.schedule(until);
            return;
        }
        match ops.add(Events::new(&self.listener, EventSet::IN)) {
            Ok(()) => self.listener_paused_until = None,
            Err(err) => {
                tracing::error!("vsock: watching the host socket again: {err:?}");
                let until = now + LISTENER_RETRY;
                self.listener_paused_until = Some(until);
                self.muxer.schedule(until);
            }
        }
    }

    /// Moves packets both ways and raises the interrupt if a used ring got
    /// anything. `tx_kicked`: the driver notified the TX queue.
    fn run_queues(&mut self, tx_kicked: bool) {
        let Some(active) = self.active.as_mut() else { return };
        let now = Instant::now();
        let mut io = QueueIo {
            mem: &active.mem,
            queues: &mut active.queues,
            queue_events: &self.queue_events,
            muxer: &mut self.muxer,
            tx_buffers: &mut self.tx_buffers,
            rx_buffers: &mut self.rx_buffers,
            metrics: &self.metrics,
            guest_cid: self.guest_cid,
            now,
            used: false,
        };
        if tx_kicked || self.tx_stalled {
            self.tx_stalled = io.process_tx();
        }
        io.process_rx();
        if self.tx_stalled && !io.muxer.rst_backlog_full() {
            self.tx_stalled = io.process_tx();
            io.process_rx();
        }
        if io.used {
            if let Err(err) = active.interrupt.signal_used_queue() {
                tracing::error!("vsock: raising the interrupt: {err}");
            }
        }
    }
}

/// The borrowed pieces queue processing works on.
struct QueueIo<'a> {
    mem: &'a GuestMemoryMmap,
    queues: &'a mut [Queue; QUEUE_COUNT],
    queue_events: &'a [QueueEvent],
    muxer: &'a mut Muxer,
    tx_buffers: &'a mut GuestBuffers,
    rx_buffers: &'a mut GuestBuffers,
    metrics: &'a VsockMetrics,
    guest_cid: u64,
    now: Instant,
    /// Something was added to a used ring.
    used: bool,
}

impl QueueIo<'_> {
    /// Takes the guest's packets. Returns true when it stopped with chains
    /// left because the RST backlog is full.
    fn process_tx(&mut self) -> bool {
        for _ in 0..QUEUE_BUDGET {
            if self.muxer.rst_backlog_full() {
                return true;
            }
            let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(self.mem) else { return false };
            let head = chain.head_index();
            match read_tx_packet(chain, self.mem, self.tx_buffers, self.guest_cid) {
                Ok(hdr) => {
                    self.metrics.tx_packets.inc();
                    if hdr.op == OP_RW {
                        self.metrics.tx_bytes.add(u64::from(hdr.len));
                    }
                    if let Err(why) = self.muxer.handle_guest_packet(&hdr, self.tx_buffers, self.mem, self.now) {
                        note_bad_packet(self.metrics, &why);
                    }
                }
                Err(bad) => note_bad_packet(self.metrics, &bad),
            }
            // The device writes nothing into TX buffers.
            if let Err(err) = self.queues[TX_QUEUE].add_used(self.mem, head, 0) {
                note_bad_packet(self.metrics, &format_args!("returning TX chain {head}: {err}"));
            }
            self.used = true;
        }
        self.kick(TX_QUEUE);
        false
    }

    /// Fills the guest's RX buffers with what is waiting for it.
    fn process_rx(&mut self) {
        for _ in 0..QUEUE_BUDGET {
            if !self.muxer.has_rx() {
                return;
            }
            // Without buffers, the guest's next RX notification resumes this.
            let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(self.mem) else { return };
            let head = chain.head_index();
            let written = match load_rx_chain(chain, self.mem, self.rx_buffers) {
                Ok(()) => match self.muxer.fill_rx(self.rx_buffers, self.mem, self.now) {
                    Some((len, payload)) => {
                        self.metrics.rx_packets.inc();
                        self.metrics.rx_bytes.add(payload as u64);
                        len
                    }
                    None => {
                        // Nothing to send after all: the buffer goes back.
                        let queue = &mut self.queues[RX_QUEUE];
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        return;
                    }
                },
                Err(bad) => {
                    note_bad_packet(self.metrics, &bad);
                    0
                }
            };
            // At most a header plus MAX_PAYLOAD: fits in u32.
            if let Err(err) = self.queues[RX_QUEUE].add_used(self.mem, head, written as u32) {
                note_bad_packet(self.metrics, &format_args!("returning RX chain {head}: {err}"));
            }
            self.used = true;
        }
        if self.muxer.has_rx() {
            self.kick(RX_QUEUE);
        }
    }

    /// Notifies a queue as the driver would, so the event loop comes back
    /// to it after serving everything else.
    fn kick(&self, queue: usize) {
        if let Some(event) = self.queue_events.get(queue) {
            if let Err(err) = event.fd.write(1) {
                tracing::error!("vsock: re-notifying queue {queue}: {err}");
            }
        }
    }
}

fn read_tx_packet(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buffers: &mut GuestBuffers,
    guest_cid: u64,
) -> Result<Header, BadPacket> {
    buffers.load(chain, mem, false)?;
    if buffers.len() < HDR_LEN {
        return Err(BadPacket::ShortChain(buffers.len()));
    }
    let mut bytes = [0u8; HDR_LEN];
    buffers.read_exact(mem, 0, &mut bytes)?;
    let hdr = Header::decode(&bytes);
    if hdr.len as usize > MAX_PAYLOAD {
        return Err(BadPacket::PayloadTooLarge(hdr.len));
    }
    let room = buffers.len() - HDR_LEN;
    if hdr.len as usize > room {
        return Err(BadPacket::PayloadBeyondChain { len: hdr.len, room });
    }
    if hdr.src_cid != guest_cid {
        return Err(BadPacket::WrongSourceCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(BadPacket::WrongDestinationCid(hdr.dst_cid));
    }
    Ok(hdr)
}

fn load_rx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buffers: &mut GuestBuffers,
) -> Result<(), BadPacket> {
    buffers.load(chain, mem, true)?;
    if buffers.len() < HDR_LEN {
        return Err(BadPacket::ShortChain(buffers.len()));
    }
    Ok(())
}

/// Counts a bad packet; logs the first few and then every power of two, so
/// a guest flooding garbage cannot flood the log.
fn note_bad_packet(metrics: &VsockMetrics, why: &dyn Display) {
    metrics.bad_packets.inc();
    let count = metrics.bad_packets.get();
    if count <= 10 || count.is_power_of_two() {
        tracing::warn!("vsock: bad packet from the guest: {why} ({count} so far)");
    } else {
        tracing::debug!("vsock: bad packet from the guest: {why} ({count} so far)");
    }
}

/// Makes `path` free to bind: nothing there, or a socket nobody serves.
fn remove_stale_socket(path: &Path, shown: &str) -> Result<(), VsockError> {
    let error = |what: &'static str| {
        let path = shown.to_owned();
        move |source| VsockError::Path { path, what, source }
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(error("inspecting the existing file")(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket { path: shown.to_owned() });
    }
    match connect_nonblocking(path) {
        // Served (EAGAIN: served, with a full backlog).
        Ok(_) => Err(VsockError::InUse { path: shown.to_owned() }),
        Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => Err(VsockError::InUse { path: shown.to_owned() }),
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(path).map_err(error("removing the stale socket"))
        }
        Err(err) => Err(error("checking the existing socket")(err)),
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.uds_path).is_ok_and(|meta| (meta.dev(), meta.ino()) == self.socket_file);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.uds_path) {
                tracing::warn!("vsock: removing {}: {err}", self.uds_path.display());
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn device_features(&self) -> u64 {
        // Nothing beyond VIRTIO_F_VERSION_1, which the transport adds: no
        // event index, no indirect descriptors, stream sockets only.
        0
    }

    /// Only VIRTIO_F_VERSION_1 can be accepted, and the device works the
    /// same with it: nothing to remember.
    fn ack_features(&mut self, _features: u64) {}

    /// The configuration space is the guest's CID, a little-endian u64.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|at| usize::try_from(at).ok());
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!("vsock: ignored a {}-byte write to the read-only configuration at {offset:#x}", data.len());
    }

    fn activate(&mut self, queues: ActivatedQueues) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivatedQueues { mem, queues, queue_events, interrupt } = queues;
        let got = queues.len();
        let queues: [Queue; QUEUE_COUNT] =
            queues.try_into().map_err(|_| ActivateError::QueueCount { want: QUEUE_COUNT, got })?;
        if queue_events.len() != QUEUE_COUNT {
            return Err(ActivateError::Backend(format!(
                "{} queue eventfds for {QUEUE_COUNT} queues",
                queue_events.len()
            )));
        }
        self.activate_evt
            .write(1)
            .map_err(|err| ActivateError::Backend(format!("waking the vsock event loop: {err}")))?;
        self.active = Some(ActiveQueues { mem, queues, interrupt });
        self.queue_events = queue_events.into_iter().map(|fd| QueueEvent { fd, registered: false }).collect();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_stalled = false;
        self.muxer.reset();
        for event in self.queue_events.drain(..) {
            if event.registered {
                self.retired_queue_events.push(event.fd);
            }
        }
        // The subscriber removes the retired eventfds from the event loop.
        if let Err(err) = self.activate_evt.write(1) {
            tracing::error!("vsock: waking the event loop after a reset: {err}");
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.activate_evt.as_raw_fd(), "activation eventfd"),
            (self.listener.as_raw_fd(), "host socket"),
            (self.muxer.epoll_fd(), "connection epoll set"),
            (self.muxer.timer_fd(), "connection timer"),
        ];
        for (fd, what) in fds {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("vsock: watching the {what}: {err:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let now = Instant::now();
        let mut tx_kicked = false;
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activation_event(ops);
            // The driver may have queued buffers before they were watched.
            tx_kicked = true;
        } else if let Some(index) = self.queue_events.iter().position(|event| event.fd.as_raw_fd() == fd) {
            let _ = self.queue_events[index].fd.read();
            // RX: new buffers, which run_queues fills anyway. The event
            // queue needs nothing.
            tx_kicked = index == TX_QUEUE;
        } else if let Some(event) = self.retired_queue_events.iter().find(|event| event.as_raw_fd() == fd) {
            // Removed when the activation event is handled.
            let _ = event.read();
        } else if fd == self.listener.as_raw_fd() {
            self.accept_host_connections(ops, now);
        } else if fd == self.muxer.epoll_fd() {
            self.muxer.handle_events(now);
        } else if fd == self.muxer.timer_fd() {
            self.muxer.handle_timer(now);
            self.resume_listener_if_due(ops, now);
        } else {
            tracing::debug!("vsock: event for fd {fd}, which the device does not watch");
        }
        self.run_queues(tx_kicked);
    }
}
