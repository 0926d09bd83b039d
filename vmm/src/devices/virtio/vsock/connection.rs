//! One vsock stream: a guest AF_VSOCK socket joined to a host Unix stream.
//!
//! Data from the host goes straight from the socket into a guest RX buffer
//! (no copy in between), never more than the guest's advertised credit.
//! Data from the guest goes straight from its TX buffer to the socket; what
//! the socket does not take waits in [`TxBacklog`], which the credit we
//! advertise (`buf_alloc`, `fwd_cnt`) keeps within [`BUF_ALLOC`].
//!
//! The two directions close independently, as a Unix stream's do: the
//! guest's SHUTDOWN(SEND) becomes `shutdown(SHUT_WR)` on the host stream
//! once the backlog is written, and the host's end of stream becomes a
//! SHUTDOWN(SEND) to the guest once everything before it was delivered.
//! When neither direction can carry anything more, the connection is over
//! and the muxer resets it (RST), which is how a vsock close completes. A
//! host end that closed altogether still has its last data delivered
//! before that RST; what the guest sends it meanwhile is dropped.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::packet::{
    GuestBuffers, Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The receive buffer we advertise to the guest per connection: the most
/// guest data we hold for a host socket that is not reading.
pub(super) const BUF_ALLOC: u32 = 256 << 10;

/// A credit update is sent once this much of the advertised buffer was
/// freed without the guest hearing about it. Any packet we send carries
/// the credit too, so a two-way stream rarely needs one.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// How long a host-initiated connection waits for the guest's answer once
/// its REQUEST was delivered (short in unit tests). Firecracker waits 2 s;
/// a loaded guest — many connections at once, or a nested, emulated host —
/// was measured to take longer, and a late answer costs only a pending
/// connection slot while the host client waits for its OK anyway.
const RESPONSE_TIMEOUT: Duration = if cfg!(test) { Duration::from_millis(300) } else { Duration::from_secs(10) };

/// How long a connection the guest closed may take to write its backlog
/// to the host. Linux gives up on a close after 8 s and resets it itself.
const CLOSE_FLUSH_TIMEOUT: Duration = if cfg!(test) { Duration::from_millis(300) } else { Duration::from_secs(8) };

/// A connection, as the guest and the muxer name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    /// The host side's port: the port the guest connected to, or the one
    /// allocated to a host-initiated connection.
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnState {
    /// Host-initiated: the REQUEST is queued or delivered; waiting for the
    /// guest's RESPONSE.
    AwaitingResponse,
    Established,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("the guest sent beyond its credit ({backlog} bytes already waiting for the host)")]
    CreditExceeded { backlog: usize },
    #[error("host stream: {0}")]
    HostIo(std::io::Error),
    #[error("reading the guest's buffer: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
}

/// Packets a connection has to send the guest, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PendingRx(u8);

impl PendingRx {
    const REQUEST: u8 = 1 << 0;
    const RESPONSE: u8 = 1 << 1;
    /// The host stream may have data (it was readable).
    const RW: u8 = 1 << 2;
    /// The host's end of stream, after all its data.
    const SHUTDOWN: u8 = 1 << 3;
    const CREDIT_UPDATE: u8 = 1 << 4;

    fn insert(&mut self, bit: u8) {
        self.0 |= bit;
    }
    fn remove(&mut self, bit: u8) {
        self.0 &= !bit;
    }
    fn contains(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    fn take(&mut self, bit: u8) -> bool {
        let had = self.contains(bit);
        self.remove(bit);
        had
    }
}

/// Guest data the host socket has not taken yet. Empty (and unallocated)
/// unless the host reads slower than the guest writes.
#[derive(Default)]
pub(super) struct TxBacklog {
    data: Vec<u8>,
    /// Bytes of `data` already written.
    written: usize,
}

impl TxBacklog {
    fn len(&self) -> usize {
        self.data.len() - self.written
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(
        &mut self,
        buffers: &GuestBuffers,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
    ) -> Result<(), ConnError> {
        // Reuse the written prefix before growing.
        if self.written > 0 && self.data.len() + len > self.data.capacity() {
            self.data.drain(..self.written);
            self.written = 0;
        }
        buffers.append_to(mem, offset, len, &mut self.data).map_err(ConnError::GuestMemory)
    }

    /// Writes as much as the socket takes; returns the bytes written.
    fn flush(&mut self, stream: &mut UnixStream) -> std::io::Result<usize> {
        let mut flushed = 0;
        while !self.is_empty() {
            match stream.write(&self.data[self.written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    flushed += n;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.is_empty() {
            // Backpressure is the exception: give the memory back.
            *self = TxBacklog::default();
        }
        Ok(flushed)
    }
}

/// A write error meaning the host end is closed.
fn host_gone(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
}

/// What [`Connection::fill_rx`] put in the guest's buffer.
pub(super) enum RxFill {
    /// A packet of this many bytes, header included.
    Packet { len: usize, payload: usize },
    /// Nothing to send after all (the host stream had no data).
    Nothing,
}

pub(super) struct Connection {
    stream: UnixStream,
    pub key: ConnKey,
    pub state: ConnState,
    /// Its local port was allocated by the muxer.
    pub host_initiated: bool,
    pending: PendingRx,
    backlog: TxBacklog,
    /// Guest bytes written to the host stream: the guest's data we no
    /// longer hold.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    sent_cnt: Wrapping<u32>,
    /// The guest's receive buffer and how much of what we sent it has
    /// consumed, from the last packet it sent.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// SHUTDOWN flags the guest sent.
    guest_shutdown: u32,
    /// A read of the host stream returned end of stream.
    host_eof: bool,
    /// The host end is closed (EPOLLHUP, EPIPE): it reads nothing more.
    host_hung_up: bool,
    /// We shut down the host stream's write side after the guest's
    /// SHUTDOWN(SEND).
    host_write_closed: bool,
    /// When the muxer resets the connection if it is still here.
    pub expiry: Option<Instant>,
    /// What the connection's socket is registered for in the muxer's
    /// epoll (None: not registered).
    pub registered: Option<EventSet>,
    /// Whether the muxer's RX queue holds this connection.
    pub rx_queued: bool,
}

impl Connection {
    /// The guest connected to a host port and the host socket accepted:
    /// answer RESPONSE.
    pub fn guest_initiated(stream: UnixStream, key: ConnKey, hdr: &Header) -> Self {
        let mut conn = Self::new(stream, key, ConnState::Established);
        conn.update_peer_credit(hdr);
        conn.pending.insert(PendingRx::RESPONSE);
        conn
    }

    /// A host process asked for a guest port: send the guest a REQUEST.
    /// `expiry` bounds the wait for the guest to take it.
    pub fn host_initiated(stream: UnixStream, key: ConnKey, expiry: Instant) -> Self {
        let mut conn = Self::new(stream, key, ConnState::AwaitingResponse);
        conn.host_initiated = true;
        conn.pending.insert(PendingRx::REQUEST);
        conn.expiry = Some(expiry);
        conn
    }

    fn new(stream: UnixStream, key: ConnKey, state: ConnState) -> Self {
        Connection {
            stream,
            key,
            state,
            host_initiated: false,
            pending: PendingRx::default(),
            backlog: TxBacklog::default(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            sent_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_shutdown: 0,
            host_eof: false,
            host_hung_up: false,
            host_write_closed: false,
            expiry: None,
            registered: None,
            rx_queued: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Every packet from the guest carries its current credit.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// How many more bytes the guest can take. A guest claiming to have
    /// consumed more than it was sent gets no credit rather than a huge one.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether reading the host stream could produce something to send.
    fn wants_host_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the guest has heard of the connection: not so for a
    /// host-initiated one whose REQUEST is still waiting for an RX buffer.
    pub fn known_to_guest(&self) -> bool {
        !self.pending.contains(PendingRx::REQUEST)
    }

    pub fn has_pending_rx(&self) -> bool {
        self.pending.0 != 0
    }

    /// The epoll events the connection needs now; None: none at all (not
    /// even hang-ups), so it is left out of the epoll set. Readability is
    /// only wanted when the guest has credit and the connection is not
    /// already waiting for an RX buffer, so a stalled reader costs nothing.
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.state != ConnState::Established {
            return None;
        }
        let mut events = EventSet::empty();
        if self.wants_host_data() && !self.pending.contains(PendingRx::RW) {
            events |= EventSet::IN;
        }
        if !self.backlog.is_empty() {
            events |= EventSet::OUT;
        }
        if events.is_empty() && self.host_eof && !self.host_hung_up {
            // The host stopped sending; EPOLLHUP (always reported) tells
            // whether it closed altogether, which ends the connection.
            return Some(EventSet::empty());
        }
        (!events.is_empty()).then_some(events)
    }

    /// Nothing can flow either way any more: the guest gets an RST.
    pub fn is_finished(&self) -> bool {
        let to_host_done = self.host_write_closed || self.host_hung_up;
        let to_guest_done =
            self.guest_shutdown & SHUTDOWN_RCV != 0 || (self.host_eof && !self.pending.contains(PendingRx::SHUTDOWN));
        self.state == ConnState::Established && to_host_done && to_guest_done
    }

    /// The guest answered our REQUEST: it accepted the connection. The
    /// host process learns the port it was given.
    pub fn on_response(&mut self) -> Result<(), ConnError> {
        if self.state != ConnState::AwaitingResponse || self.pending.contains(PendingRx::REQUEST) {
            return Err(ConnError::Protocol("RESPONSE to no request"));
        }
        self.state = ConnState::Established;
        self.expiry = None;
        let line = format!("OK {}\n", self.key.local_port);
        // The stream is fresh and this is the first thing written to it,
        // so a Unix socket takes it whole.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(_) => Err(ConnError::HostIo(ErrorKind::WriteZero.into())),
            Err(err) => Err(ConnError::HostIo(err)),
        }
    }

    /// A data packet from the guest: `len` payload bytes after the header.
    pub fn on_rw(&mut self, buffers: &GuestBuffers, mem: &GuestMemoryMmap, len: usize) -> Result<(), ConnError> {
        if self.state != ConnState::Established {
            return Err(ConnError::Protocol("data before the connection was established"));
        }
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Err(ConnError::Protocol("data after SHUTDOWN(SEND)"));
        }
        if self.host_hung_up {
            self.note_forwarded(len);
            return Ok(());
        }
        let mut written = 0;
        if self.backlog.is_empty() {
            // A host end closed since is EPIPE here (SIGPIPE is ignored in
            // a Rust program).
            match buffers.write_to(mem, HDR_LEN, len, &mut self.stream) {
                Ok(n) => written = n,
                Err(err) if host_gone(&err) => {
                    self.on_host_gone();
                    self.note_forwarded(len);
                    return Ok(());
                }
                Err(err) => return Err(ConnError::HostIo(err)),
            }
            self.note_forwarded(written);
        }
        let rest = len - written;
        if rest > 0 {
            if self.backlog.len() + rest > BUF_ALLOC as usize {
                return Err(ConnError::CreditExceeded { backlog: self.backlog.len() });
            }
            self.backlog.append(buffers, mem, HDR_LEN + written, rest)?;
        }
        Ok(())
    }

    /// The guest's SHUTDOWN: flags accumulate, they cannot be taken back.
    pub fn on_shutdown(&mut self, flags: u32, now: Instant) -> Result<(), ConnError> {
        if self.state != ConnState::Established {
            return Err(ConnError::Protocol("SHUTDOWN before the connection was established"));
        }
        self.guest_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.guest_shutdown & SHUTDOWN_RCV != 0 {
            self.pending.remove(PendingRx::RW);
        }
        self.close_host_write_if_done();
        if self.guest_shutdown == SHUTDOWN_BOTH && !self.host_write_closed && self.expiry.is_none() {
            // The guest closed and waits for our RST; the backlog gets a
            // bounded time to reach the host.
            self.expiry = Some(now + CLOSE_FLUSH_TIMEOUT);
        }
        Ok(())
    }

    pub fn on_credit_request(&mut self) {
        self.pending.insert(PendingRx::CREDIT_UPDATE);
    }

    /// Readiness of the host stream.
    pub fn on_host_event(&mut self, events: EventSet) -> Result<(), ConnError> {
        if events.contains(EventSet::ERROR) {
            let err = self.stream.take_error().ok().flatten().unwrap_or_else(|| ErrorKind::ConnectionReset.into());
            return Err(ConnError::HostIo(err));
        }
        if events.contains(EventSet::HANG_UP) {
            self.on_host_gone();
        }
        if events.contains(EventSet::OUT) && !self.backlog.is_empty() {
            match self.backlog.flush(&mut self.stream) {
                Ok(flushed) => {
                    self.note_forwarded(flushed);
                    self.close_host_write_if_done();
                }
                Err(err) if host_gone(&err) => self.on_host_gone(),
                Err(err) => return Err(ConnError::HostIo(err)),
            }
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP) && self.wants_host_data() {
            self.pending.insert(PendingRx::RW);
        }
        Ok(())
    }

    /// The host end reads nothing more. What the guest sent or sends is
    /// dropped as if read (its credit is not lost), while the host's last
    /// data still goes to the guest; the end of that stream ends the
    /// connection.
    fn on_host_gone(&mut self) {
        self.host_hung_up = true;
        let dropped = self.backlog.len();
        if dropped > 0 {
            tracing::debug!("vsock: host:{} closed; {dropped} bytes from the guest dropped", self.key.local_port);
            self.backlog = TxBacklog::default();
            self.note_forwarded(dropped);
        }
    }

    fn note_forwarded(&mut self, bytes: usize) {
        // Wrapping by design: the counters are modulo 2^32 (virtio spec).
        self.fwd_cnt += Wrapping(bytes as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.insert(PendingRx::CREDIT_UPDATE);
        }
    }

    /// After the guest's SHUTDOWN(SEND) and once its data is written, the
    /// host reader gets its end of stream.
    fn close_host_write_if_done(&mut self) {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 && self.backlog.is_empty() && !self.host_write_closed {
            // ENOTCONN when the host end is already gone: nothing to tell it.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_closed = true;
        }
    }

    fn header(&self, guest_cid: u64, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Writes the connection's next packet for the guest into `buffers`
    /// (at least a header long). Control packets come first, then data,
    /// then the end of stream (which a read discovers after the data), and
    /// a lone credit update last: every packet carries the credit anyway.
    pub fn fill_rx(
        &mut self,
        buffers: &GuestBuffers,
        mem: &GuestMemoryMmap,
        guest_cid: u64,
        now: Instant,
    ) -> Result<RxFill, ConnError> {
        let mut hdr;
        if self.pending.take(PendingRx::REQUEST) {
            hdr = self.header(guest_cid, OP_REQUEST);
            self.expiry = Some(now + RESPONSE_TIMEOUT);
        } else if self.pending.take(PendingRx::RESPONSE) {
            hdr = self.header(guest_cid, OP_RESPONSE);
        } else if let Some(data_hdr) = self.read_host_data(buffers, mem, guest_cid)? {
            hdr = data_hdr;
        } else if self.pending.take(PendingRx::SHUTDOWN) {
            hdr = self.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
        } else if self.pending.contains(PendingRx::CREDIT_UPDATE) {
            hdr = self.header(guest_cid, OP_CREDIT_UPDATE);
        } else {
            return Ok(RxFill::Nothing);
        }
        // The header goes in last: a data packet's length is known only
        // after the read.
        buffers.write_all(mem, 0, &hdr.encode()).map_err(ConnError::GuestMemory)?;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.remove(PendingRx::CREDIT_UPDATE);
        Ok(RxFill::Packet { len: HDR_LEN + hdr.len as usize, payload: hdr.len as usize })
    }

    /// A data packet straight from the host stream into the guest's buffer,
    /// or None: nothing to read (the RW indication is then dropped, and the
    /// stream's readability re-armed by the muxer).
    fn read_host_data(
        &mut self,
        buffers: &GuestBuffers,
        mem: &GuestMemoryMmap,
        guest_cid: u64,
    ) -> Result<Option<Header>, ConnError> {
        if !self.pending.contains(PendingRx::RW) {
            return Ok(None);
        }
        if !self.wants_host_data() {
            self.pending.remove(PendingRx::RW);
            return Ok(None);
        }
        let room = buffers.len() - HDR_LEN;
        let max = room.min(self.peer_credit() as usize).min(MAX_PAYLOAD);
        if max == 0 {
            // An RX buffer with room for a header only: wait for a bigger one.
            return Ok(None);
        }
        match buffers.read_from(mem, HDR_LEN, max, &mut self.stream) {
            Ok(0) => {
                self.pending.remove(PendingRx::RW);
                self.host_eof = true;
                // Tell the guest unless the connection is over anyway
                // (the host end is gone too): then the RST says it all.
                if !(self.host_hung_up || self.host_write_closed) {
                    self.pending.insert(PendingRx::SHUTDOWN);
                }
                Ok(None)
            }
            Ok(n) => {
                // More may be waiting: RW stays pending.
                self.sent_cnt += Wrapping(n as u32);
                let mut hdr = self.header(guest_cid, OP_RW);
                hdr.len = n as u32;
                Ok(Some(hdr))
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                self.pending.remove(PendingRx::RW);
                Ok(None)
            }
            Err(err) => Err(ConnError::HostIo(err)),
        }
    }
}
