//! The muxer: all connections of one vsock device and the host sockets
//! behind them.
//!
//! Host sockets (accepted ones still in their `CONNECT <port>` handshake,
//! and connected streams) are watched by the muxer's own epoll set, whose
//! one fd sits in the VMM's event loop. The muxer adds, changes and
//! removes their registrations itself, always before a socket is closed,
//! so the set always mirrors the live sockets, and a device reset (on a
//! vCPU thread, without the event loop's `EventOps`) can drop everything
//! at once. An event's token is a slot index plus a generation, so an
//! event for a socket removed earlier in the same batch finds nothing.
//!
//! Packets for the guest wait as per-connection indications (a connection
//! is in the RX queue at most once), plus a bounded queue of RSTs for
//! connections that no longer exist: what the guest is owed is bounded by
//! the connection limit, whatever it does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, ConnState, Connection, RxFill};
use super::packet::{
    GuestBuffers, Header, HDR_LEN, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use super::VsockMetrics;

/// Open connections and host handshakes together; more are refused (RST
/// to the guest, a closed socket to the host). Unit tests reach the limit
/// with a smaller one.
pub(super) const MAX_CONNECTIONS: usize = if cfg!(test) { 32 } else { 1024 };

/// Accepted host sockets that have not sent their `CONNECT` line yet.
const MAX_HANDSHAKES: usize = 64;

/// How long a host client may take to send `CONNECT <port>\n`: generous
/// for a person typing into socat, bounded for one that never does
/// (short in unit tests).
const HANDSHAKE_TIMEOUT: Duration = if cfg!(test) { Duration::from_millis(300) } else { Duration::from_secs(10) };

/// How long a host-initiated connection may wait for the guest to take
/// its REQUEST (the driver not up yet, no RX buffers).
const REQUEST_DELIVERY_TIMEOUT: Duration =
    if cfg!(test) { Duration::from_millis(600) } else { Duration::from_secs(10) };

/// RSTs for connections that no longer exist. When full, the device stops
/// taking TX packets (each can cause one) until the guest drains it.
pub(super) const RST_BACKLOG: usize = 256;

/// The reason of a connection's normal end.
const CLOSED_BOTH_WAYS: &str = "closed both ways";

/// Host ports for host-initiated connections are allocated from here up
/// (as Firecracker does), out of the way of the ports guests listen on.
const HOST_PORT_FIRST: u32 = 1 << 30;

/// `CONNECT 4294967295\n` is 19 bytes.
const HANDSHAKE_LINE_MAX: usize = 32;

/// Epoll events handled per wake-up; more wake the loop again.
const EPOLL_BATCH: usize = 32;

/// An accepted host socket reading its `CONNECT <port>\n` line.
struct Handshake {
    stream: UnixStream,
    line: [u8; HANDSHAKE_LINE_MAX],
    len: usize,
    deadline: Instant,
}

enum HandshakeStep {
    Incomplete,
    Port(u32),
    Failed(String),
}

impl Handshake {
    /// Reads the line a byte at a time: whatever follows it is the
    /// stream's data, for the guest.
    fn advance(&mut self) -> HandshakeStep {
        loop {
            if self.len == self.line.len() {
                return HandshakeStep::Failed(format!("no end of line in {HANDSHAKE_LINE_MAX} bytes"));
            }
            match self.stream.read(&mut self.line[self.len..self.len + 1]) {
                Ok(0) => return HandshakeStep::Failed("closed before CONNECT".into()),
                Ok(_) => {
                    self.len += 1;
                    if self.line[self.len - 1] == b'\n' {
                        return match parse_connect(&self.line[..self.len]) {
                            Some(port) => HandshakeStep::Port(port),
                            None => HandshakeStep::Failed(format!(
                                "not a CONNECT line: {:?}",
                                String::from_utf8_lossy(&self.line[..self.len])
                            )),
                        };
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return HandshakeStep::Incomplete,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return HandshakeStep::Failed(err.to_string()),
            }
        }
    }
}

/// `CONNECT <port>` (the keyword in any case, as Firecracker accepts it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let mut words = std::str::from_utf8(line).ok()?.split_whitespace();
    let keyword = words.next()?;
    let port = words.next()?.parse().ok()?;
    (keyword.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

enum Endpoint {
    Handshake(Handshake),
    Connection(Connection),
}

#[derive(Default)]
struct Slot {
    generation: u32,
    endpoint: Option<Endpoint>,
}

fn token(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

fn split_token(token: u64) -> (usize, u32) {
    ((token & u64::from(u32::MAX)) as usize, (token >> 32) as u32)
}

pub(super) struct Muxer {
    guest_cid: u64,
    uds_path: String,
    epoll: Epoll,
    /// One-shot, armed for the earliest deadline (handshakes, REQUESTs,
    /// closing connections, the device's own wake-ups).
    timer: TimerFd,
    timer_deadline: Option<Instant>,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    by_key: HashMap<ConnKey, usize>,
    /// Local ports given to host-initiated connections.
    host_ports: HashSet<u32>,
    next_host_port: u32,
    handshakes: usize,
    /// Tokens of connections with something to send the guest.
    rx_queue: VecDeque<u64>,
    rst_queue: VecDeque<ConnKey>,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &str, metrics: Arc<VsockMetrics>) -> io::Result<Self> {
        let timer = TimerFd::new().map_err(io::Error::from)?;
        // A timerfd read blocks unless it expired, and re-arming clears an
        // expiry already reported by epoll: never block the event loop.
        set_nonblocking(timer.as_raw_fd())?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            epoll: Epoll::new()?,
            timer,
            timer_deadline: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            host_ports: HashSet::new(),
            next_host_port: HOST_PORT_FIRST,
            handshakes: 0,
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            metrics,
        })
    }

    /// The muxer's epoll set, readable when a host socket has an event.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Readable when a deadline passed.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    fn endpoints(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    pub fn endpoint_count(&self) -> usize {
        self.endpoints()
    }

    /// Something is waiting for an RX buffer.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    /// The RST queue has no room for what one more TX packet could cause.
    pub fn rst_backlog_full(&self) -> bool {
        self.rst_queue.len() >= RST_BACKLOG
    }

    fn insert(&mut self, endpoint: Endpoint) -> usize {
        match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot].endpoint = Some(endpoint);
                slot
            }
            None => {
                self.slots.push(Slot { generation: 0, endpoint: Some(endpoint) });
                self.slots.len() - 1
            }
        }
    }

    /// Takes an endpoint out, its socket out of the epoll set first.
    fn remove(&mut self, slot: usize) -> Option<Endpoint> {
        let entry = self.slots.get_mut(slot)?;
        let endpoint = entry.endpoint.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free_slots.push(slot);
        let (fd, registered) = match &endpoint {
            Endpoint::Handshake(handshake) => {
                self.handshakes -= 1;
                (handshake.stream.as_raw_fd(), true)
            }
            Endpoint::Connection(conn) => {
                self.by_key.remove(&conn.key);
                if conn.host_initiated {
                    self.host_ports.remove(&conn.key.local_port);
                }
                (conn.stream().as_raw_fd(), conn.registered.is_some())
            }
        };
        if registered {
            if let Err(err) = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()) {
                tracing::warn!("vsock: removing a host socket from the epoll set: {err}");
            }
        }
        Some(endpoint)
    }

    /// Ends a connection and tells the guest (RST), if it knew of it.
    /// Anything but the normal end of a connection is logged at info: the
    /// host process sees only its socket close.
    fn reset_connection(&mut self, slot: usize, reason: &dyn std::fmt::Display) {
        if let Some(Endpoint::Connection(conn)) = self.remove(slot) {
            let reason = reason.to_string();
            if reason == CLOSED_BOTH_WAYS {
                tracing::debug!("vsock: connection host:{} guest:{} ended", conn.key.local_port, conn.key.peer_port);
            } else {
                tracing::info!(
                    "vsock: connection host:{} guest:{} reset: {reason}",
                    conn.key.local_port,
                    conn.key.peer_port
                );
            }
            if conn.state == ConnState::AwaitingResponse {
                self.metrics.connections_refused.inc();
            }
            if conn.known_to_guest() {
                self.queue_rst(conn.key);
            }
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rst_queue.len() >= RST_BACKLOG {
            // Only host-side events get here with a full queue (TX stops
            // first); the guest's connection then ends at its own timeout.
            self.metrics.lost_resets.inc();
            tracing::debug!("vsock: RST backlog full, RST for host:{} dropped", key.local_port);
            return;
        }
        self.rst_queue.push_back(key);
    }

    /// Brings a connection's epoll registration, RX-queue membership and
    /// deadline in line with its state, or ends it when it is over.
    fn refresh(&mut self, slot: usize) {
        let Some(Slot { generation, endpoint: Some(Endpoint::Connection(conn)) }) = self.slots.get_mut(slot) else {
            return;
        };
        let token = token(slot, *generation);
        if conn.is_finished() {
            self.reset_connection(slot, &CLOSED_BOTH_WAYS);
            return;
        }
        let wanted = conn.wanted_events();
        if wanted != conn.registered {
            let fd = conn.stream().as_raw_fd();
            let result = match (conn.registered, wanted) {
                (None, Some(events)) => self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token)),
                (Some(_), Some(events)) => self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token)),
                (Some(_), None) => self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => conn.registered = wanted,
                Err(err) => {
                    tracing::warn!("vsock: watching a host socket: {err}");
                    self.reset_connection(slot, &err);
                    return;
                }
            }
        }
        if conn.has_pending_rx() && !conn.rx_queued {
            conn.rx_queued = true;
            self.rx_queue.push_back(token);
        }
        if let Some(expiry) = conn.expiry {
            self.schedule(expiry);
        }
    }

    /// Makes the timer fire at `deadline` at the latest.
    pub fn schedule(&mut self, deadline: Instant) {
        if self.timer_deadline.is_some_and(|current| current <= deadline) {
            return;
        }
        // timerfd cannot take 0 (it would disarm).
        let delay = deadline.saturating_duration_since(Instant::now()).max(Duration::from_micros(1));
        match self.timer.reset(delay, None) {
            Ok(()) => self.timer_deadline = Some(deadline),
            Err(err) => tracing::error!("vsock: arming the connection timer: {err}"),
        }
    }

    /// A host client connected to the device's socket.
    pub fn accept(&mut self, stream: UnixStream, now: Instant) {
        if self.handshakes >= MAX_HANDSHAKES || self.endpoints() >= MAX_CONNECTIONS {
            self.metrics.connections_refused.inc();
            tracing::debug!(
                "vsock: host connection refused: {} connections, {} handshakes",
                self.endpoints(),
                self.handshakes
            );
            return;
        }
        let fd = stream.as_raw_fd();
        let deadline = now + HANDSHAKE_TIMEOUT;
        let slot =
            self.insert(Endpoint::Handshake(Handshake { stream, line: [0; HANDSHAKE_LINE_MAX], len: 0, deadline }));
        self.handshakes += 1;
        let token = token(slot, self.slots[slot].generation);
        if let Err(err) = self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)) {
            tracing::warn!("vsock: watching a host connection: {err}");
            // Not registered: take it out without a Delete.
            if let Some(Endpoint::Handshake(handshake)) = self.slots[slot].endpoint.take() {
                drop(handshake);
            }
            self.slots[slot].generation = self.slots[slot].generation.wrapping_add(1);
            self.free_slots.push(slot);
            self.handshakes -= 1;
            return;
        }
        self.schedule(deadline);
    }

    /// Handles what the muxer's epoll set reports.
    pub fn handle_events(&mut self, now: Instant) {
        let mut events = [EpollEvent::default(); EPOLL_BATCH];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == ErrorKind::Interrupted => 0,
            Err(err) => {
                tracing::error!("vsock: reading the connection epoll set: {err}");
                0
            }
        };
        for event in &events[..count] {
            let (slot, generation) = split_token(event.data());
            let Some(entry) = self.slots.get_mut(slot) else { continue };
            if entry.generation != generation {
                continue;
            }
            match &mut entry.endpoint {
                Some(Endpoint::Handshake(handshake)) => match handshake.advance() {
                    HandshakeStep::Incomplete => {}
                    HandshakeStep::Port(port) => self.start_host_connection(slot, port, now),
                    HandshakeStep::Failed(why) => {
                        tracing::debug!("vsock: host connection dropped: {why}");
                        self.metrics.connections_refused.inc();
                        self.remove(slot);
                    }
                },
                Some(Endpoint::Connection(conn)) => match conn.on_host_event(event.event_set()) {
                    Ok(()) => self.refresh(slot),
                    Err(err) => self.reset_connection(slot, &err),
                },
                None => {}
            }
        }
    }

    /// A host client asked for guest port `peer_port`: its socket becomes
    /// a connection (keeping its slot and its epoll registration, which
    /// refresh() then adjusts) with a REQUEST for the guest.
    fn start_host_connection(&mut self, slot: usize, peer_port: u32, now: Instant) {
        let Some(local_port) = self.allocate_host_port(peer_port) else {
            tracing::warn!("vsock: no free host port for a connection to guest port {peer_port}");
            self.metrics.connections_refused.inc();
            self.remove(slot);
            return;
        };
        let Some(Endpoint::Handshake(handshake)) = self.slots[slot].endpoint.take() else { return };
        self.handshakes -= 1;
        let key = ConnKey { local_port, peer_port };
        let mut conn = Connection::host_initiated(handshake.stream, key, now + REQUEST_DELIVERY_TIMEOUT);
        conn.registered = Some(EventSet::IN);
        self.slots[slot].endpoint = Some(Endpoint::Connection(conn));
        self.by_key.insert(key, slot);
        self.host_ports.insert(local_port);
        self.refresh(slot);
    }

    fn allocate_host_port(&mut self, peer_port: u32) -> Option<u32> {
        // Both sets hold at most MAX_CONNECTIONS ports: a free one is found
        // within this many tries.
        for _ in 0..=2 * MAX_CONNECTIONS {
            let port = self.next_host_port;
            // u32::MAX is VMADDR_PORT_ANY: never a connection's port.
            self.next_host_port = if port >= u32::MAX - 1 { HOST_PORT_FIRST } else { port + 1 };
            let key = ConnKey { local_port: port, peer_port };
            if !self.host_ports.contains(&port) && !self.by_key.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Deadlines that passed: handshakes never completed, REQUESTs never
    /// answered, closed connections whose data never drained.
    pub fn handle_timer(&mut self, now: Instant) {
        // Non-blocking: nothing to read if the timer was re-armed since
        // epoll reported it.
        let _ = self.timer.wait();
        self.timer_deadline = None;
        let mut next: Option<Instant> = None;
        for slot in 0..self.slots.len() {
            let deadline = match &self.slots[slot].endpoint {
                Some(Endpoint::Handshake(handshake)) => Some(handshake.deadline),
                Some(Endpoint::Connection(conn)) => conn.expiry,
                None => None,
            };
            let Some(deadline) = deadline else { continue };
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            match self.slots[slot].endpoint {
                Some(Endpoint::Handshake(_)) => {
                    tracing::debug!("vsock: host connection dropped: no CONNECT line in time");
                    self.metrics.connections_refused.inc();
                    self.remove(slot);
                }
                _ => self.reset_connection(slot, &"timed out"),
            }
        }
        if let Some(deadline) = next {
            self.schedule(deadline);
        }
    }

    /// A well-formed packet from the guest (addresses and length already
    /// checked). Err names why it counts as a bad packet; it was answered
    /// (RST) or dropped.
    pub fn handle_guest_packet(
        &mut self,
        hdr: &Header,
        buffers: &GuestBuffers,
        mem: &GuestMemoryMmap,
        now: Instant,
    ) -> Result<(), &'static str> {
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        if hdr.type_ != TYPE_STREAM {
            match self.by_key.get(&key) {
                Some(&slot) => self.reset_connection(slot, &"a packet of another socket type"),
                None if hdr.op != OP_RST => self.queue_rst(key),
                None => {}
            }
            return Err("unsupported socket type");
        }
        let Some(&slot) = self.by_key.get(&key) else {
            return match hdr.op {
                OP_REQUEST => {
                    self.connect_to_host(key, hdr);
                    Ok(())
                }
                OP_RST => Ok(()),
                OP_RESPONSE | OP_SHUTDOWN | OP_RW | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {
                    self.queue_rst(key);
                    Ok(())
                }
                _ => {
                    self.queue_rst(key);
                    Err("unknown operation")
                }
            };
        };
        let Some(Endpoint::Connection(conn)) = &mut self.slots[slot].endpoint else { return Ok(()) };
        conn.update_peer_credit(hdr);
        let result = match hdr.op {
            OP_RST => {
                if conn.state == ConnState::AwaitingResponse {
                    self.metrics.connections_refused.inc();
                }
                self.remove(slot);
                return Ok(());
            }
            OP_RESPONSE => conn.on_response().map(|()| self.metrics.connections_opened.inc()),
            OP_RW => conn.on_rw(buffers, mem, hdr.len as usize),
            OP_SHUTDOWN => conn.on_shutdown(hdr.flags, now),
            OP_CREDIT_UPDATE => Ok(()),
            OP_CREDIT_REQUEST => {
                conn.on_credit_request();
                Ok(())
            }
            OP_REQUEST => {
                self.reset_connection(slot, &"REQUEST on an open connection");
                return Ok(());
            }
            _ => {
                self.reset_connection(slot, &"unknown operation");
                return Err("unknown operation");
            }
        };
        match result {
            Ok(()) => self.refresh(slot),
            Err(err) => self.reset_connection(slot, &err),
        }
        Ok(())
    }

    /// The guest's REQUEST for host port P: connect to `<uds_path>_P`.
    fn connect_to_host(&mut self, key: ConnKey, hdr: &Header) {
        if self.endpoints() >= MAX_CONNECTIONS {
            self.metrics.connections_refused.inc();
            tracing::debug!("vsock: guest connection to host port {} refused: connection limit", key.local_port);
            self.queue_rst(key);
            return;
        }
        let path = format!("{}_{}", self.uds_path, key.local_port);
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let slot = self.insert(Endpoint::Connection(Connection::guest_initiated(stream, key, hdr)));
                self.by_key.insert(key, slot);
                self.metrics.connections_opened.inc();
                self.refresh(slot);
            }
            Err(err) => {
                self.metrics.connections_refused.inc();
                tracing::debug!("vsock: guest connection to host port {} refused: {path}: {err}", key.local_port);
                self.queue_rst(key);
            }
        }
    }

    /// Writes the next packet for the guest into `buffers`, an RX chain at
    /// least a header long. Returns (bytes written, of which payload), or
    /// None when nothing is ready after all. Connections take turns.
    pub fn fill_rx(&mut self, buffers: &GuestBuffers, mem: &GuestMemoryMmap, now: Instant) -> Option<(usize, usize)> {
        // Each queued connection is asked at most once per call, so one
        // that finds nothing to send (and queues itself again) cannot spin.
        let mut turns = self.rx_queue.len();
        loop {
            if let Some(key) = self.rst_queue.pop_front() {
                let hdr = Header {
                    src_cid: HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    type_: TYPE_STREAM,
                    op: OP_RST,
                    ..Header::default()
                };
                return match buffers.write_all(mem, 0, &hdr.encode()) {
                    Ok(()) => Some((HDR_LEN, 0)),
                    Err(err) => {
                        tracing::warn!("vsock: writing an RX buffer: {err}");
                        Some((0, 0))
                    }
                };
            }
            if turns == 0 {
                return None;
            }
            turns -= 1;
            let (slot, generation) = split_token(self.rx_queue.pop_front()?);
            let Some(entry) = self.slots.get_mut(slot) else { continue };
            let Some(Endpoint::Connection(conn)) = &mut entry.endpoint else { continue };
            if entry.generation != generation {
                continue;
            }
            conn.rx_queued = false;
            match conn.fill_rx(buffers, mem, self.guest_cid, now) {
                Ok(RxFill::Packet { len, payload }) => {
                    self.refresh(slot);
                    return Some((len, payload));
                }
                Ok(RxFill::Nothing) => self.refresh(slot),
                Err(err) => self.reset_connection(slot, &err),
            }
        }
    }

    /// The driver reset the device: every connection and handshake goes,
    /// silently (the guest's side is gone with the driver).
    pub fn reset(&mut self) {
        for slot in 0..self.slots.len() {
            self.remove(slot);
        }
        self.rx_queue.clear();
        self.rst_queue.clear();
        self.next_host_port = HOST_PORT_FIRST;
        if let Err(err) = self.timer.clear() {
            tracing::warn!("vsock: disarming the connection timer: {err}");
        }
        self.timer_deadline = None;
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL) on an open fd; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl(F_SETFL) on an open fd; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects a non-blocking Unix stream socket to `path`. A Unix connect
/// completes at once or fails (EAGAIN: the listener's backlog is full), so
/// unlike `UnixStream::connect` this never blocks the event loop on a host
/// service that does not accept.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un { sun_family: libc::AF_UNIX as libc::sa_family_t, sun_path: [0; 108] };
    // One byte stays for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(ErrorKind::InvalidInput, "not a usable Unix socket path (too long?)"));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) takes no memory; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is an initialised sockaddr_un that outlives the call,
    // and len (at most its size) covers the path and its NUL.
    let rc = unsafe {
        libc::connect(socket.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"connect 4294967295\r\n"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT\n"), None);
        assert_eq!(parse_connect(b"CONNECT 52 53\n"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296\n"), None);
        assert_eq!(parse_connect(b"LISTEN 52\n"), None);
        assert_eq!(parse_connect(b"CONNECT -1\n"), None);
        assert_eq!(parse_connect(b"\xff\n"), None);
    }

    #[test]
    fn tokens_carry_slot_and_generation() {
        assert_eq!(split_token(token(7, 3)), (7, 3));
        assert_eq!(split_token(token(u32::MAX as usize, u32::MAX)), (u32::MAX as usize, u32::MAX));
    }
}
