//! virtio-vsock: the three queues, the packet header and the
//! connection state machine, with the fuzzer as the guest driver (packets
//! on the TX queue, buffers on the RX and event queues) and as the host
//! processes (clients of the device's socket, services on `<uds>_<port>`).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

use husk_api::devices::VsockConfig;
use vmm_sys_util::tempdir::TempDir;

use super::driver::{queue_size, Wired, BUFFERS, WRITE};
use super::Input;
use crate::devices::virtio::vsock::Vsock;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const EVENT_QUEUE: usize = 2;

const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;
/// virtio 1.2, 5.10.6.
const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
/// Host ports with a service listening.
const SERVICE_PORTS: [u32; 2] = [1024, 5000];
/// Where the device numbers host-initiated connections from.
const HOST_PORT_FIRST: u32 = 1 << 30;
/// Host sockets open at once, and connections made to the device's socket
/// per run: each waits in its listen backlog until the device accepts it,
/// and a full backlog would block the next connect.
const MAX_STREAMS: usize = 16;
const MAX_CONNECTS: usize = 64;

/// Where the driver puts TX packets and RX buffers, each area used round
/// robin.
const TX_AREA: (u64, u64) = (BUFFERS, 0x10_0000);
const RX_AREA: (u64, u64) = (0x10_0000, 0x1f_0000);

/// A port a packet or a host client names: services, host-initiated
/// connections, small guest ports, a closed port, or anything.
fn port(input: &mut Input) -> u32 {
    match input.u8() % 6 {
        0 => SERVICE_PORTS[0],
        1 => SERVICE_PORTS[1],
        2 => HOST_PORT_FIRST + u32::from(input.u8() % 4),
        3 => u32::from(input.u8()),
        4 => 9,
        _ => input.u32(),
    }
}

struct Harness {
    wired: Wired<Vsock>,
    uds: String,
    services: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    connects: usize,
    tx_cursor: u64,
    rx_cursor: u64,
    /// Removed last: holds every socket file.
    _dir: TempDir,
}

impl Harness {
    fn new(input: &mut Input) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/husk-fuzz-vsock-").expect("temporary directory");
        let uds = dir.as_path().join("v.sock").to_str().expect("UTF-8 temporary path").to_owned();
        let services = SERVICE_PORTS
            .iter()
            .map(|port| {
                let listener = UnixListener::bind(format!("{uds}_{port}")).expect("service socket");
                listener.set_nonblocking(true).expect("non-blocking service socket");
                listener
            })
            .collect();
        let device =
            Vsock::new(&VsockConfig { vsock_id: None, guest_cid: GUEST_CID, uds_path: uds.clone() }).expect("vsock");
        let wired = Wired::new(device, queue_size(input));
        Harness {
            wired,
            uds,
            services,
            streams: Vec::new(),
            connects: 0,
            tx_cursor: TX_AREA.0,
            rx_cursor: RX_AREA.0,
            _dir: dir,
        }
    }

    /// Room for `len` bytes in `area`, from `cursor` on, wrapping.
    fn place(cursor: &mut u64, area: (u64, u64), len: u64) -> u64 {
        if *cursor + len > area.1 {
            *cursor = area.0;
        }
        let at = *cursor;
        *cursor += len.min(area.1 - area.0);
        at
    }

    /// A packet from the guest: a header from the input (mostly valid
    /// addresses and a truthful length, so the state machine gets deep),
    /// its payload, laid out over one to three descriptors.
    fn guest_packet(&mut self, input: &mut Input) {
        let src_cid = if input.one_in(16) { input.u64() } else { GUEST_CID };
        let dst_cid = if input.one_in(16) { input.u64() } else { HOST_CID };
        let (src_port, dst_port) = (port(input), port(input));
        let op = match input.u8() % 10 {
            n @ 0..=6 => u16::from(n) + 1,
            7 => 5,
            _ => input.u16(),
        };
        let type_ = if input.one_in(16) { input.u16() } else { TYPE_STREAM };
        let flags = if input.bool() { u32::from(input.u8() % 4) } else { input.u32() };
        let buf_alloc = match input.u8() % 4 {
            0 => 256 << 10,
            1 => u32::from(input.u16()),
            2 => 0,
            _ => input.u32(),
        };
        let fwd_cnt = input.u32();
        let payload = input.data(8192);
        let len = if input.one_in(16) { input.u32() } else { payload.len() as u32 };

        let mut packet = Vec::with_capacity(HDR_LEN + payload.len());
        packet.extend_from_slice(&src_cid.to_le_bytes());
        packet.extend_from_slice(&dst_cid.to_le_bytes());
        packet.extend_from_slice(&src_port.to_le_bytes());
        packet.extend_from_slice(&dst_port.to_le_bytes());
        packet.extend_from_slice(&len.to_le_bytes());
        packet.extend_from_slice(&type_.to_le_bytes());
        packet.extend_from_slice(&op.to_le_bytes());
        packet.extend_from_slice(&flags.to_le_bytes());
        packet.extend_from_slice(&buf_alloc.to_le_bytes());
        packet.extend_from_slice(&fwd_cnt.to_le_bytes());
        packet.extend_from_slice(payload);

        // Split points through the header and payload, as a driver may.
        let total = packet.len();
        let mut cuts: Vec<usize> = (0..input.u8() % 3).map(|_| usize::from(input.u16()) % (total + 1)).collect();
        cuts.sort_unstable();
        let mut descs = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([total]) {
            let piece = &packet[start..end];
            let at = Self::place(&mut self.tx_cursor, TX_AREA, piece.len() as u64);
            super::driver::fill(&self.wired.mem, at, piece);
            descs.push((at, piece.len() as u32, 0));
            start = end;
        }
        let mem = self.wired.mem.clone();
        self.wired.rings[TX_QUEUE].add_chain(&mem, &descs);
        self.wired.kick(TX_QUEUE);
    }

    /// RX buffers, as Linux posts them (a header and 4 KiB) or of other
    /// sizes, over one or two descriptors.
    fn rx_buffers(&mut self, input: &mut Input) {
        let mem = self.wired.mem.clone();
        for _ in 0..1 + input.u8() % 8 {
            let len = match input.u8() % 4 {
                0 => HDR_LEN as u32 + 4096,
                1 => HDR_LEN as u32,
                2 => HDR_LEN as u32 + u32::from(input.u8()),
                _ => u32::from(input.u16()),
            };
            let first = if input.bool() { len.min(HDR_LEN as u32) } else { len };
            let at = Self::place(&mut self.rx_cursor, RX_AREA, u64::from(len));
            let mut descs = vec![(at, first, WRITE)];
            if first < len {
                descs.push((at + u64::from(first), len - first, WRITE));
            }
            self.wired.rings[RX_QUEUE].add_chain(&mem, &descs);
        }
        self.wired.kick(RX_QUEUE);
    }

    fn host_connect(&mut self, input: &mut Input) {
        if self.streams.len() >= MAX_STREAMS || self.connects >= MAX_CONNECTS {
            return;
        }
        self.connects += 1;
        let mut stream = UnixStream::connect(&self.uds).expect("connecting to the device's socket");
        stream.set_nonblocking(true).expect("non-blocking host stream");
        let line =
            if input.one_in(8) { input.data(40).to_vec() } else { format!("CONNECT {}\n", port(input)).into_bytes() };
        let _ = stream.write(&line);
        self.streams.push(stream);
    }

    fn accept_services(&mut self) {
        for listener in &self.services {
            while self.streams.len() < MAX_STREAMS {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(true).expect("non-blocking service stream");
                        self.streams.push(stream);
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("accepting a guest connection: {err}"),
                }
            }
        }
    }

    fn stream(&mut self, input: &mut Input) -> Option<usize> {
        let pick = usize::from(input.u8());
        (!self.streams.is_empty()).then(|| pick % self.streams.len())
    }

    fn host_op(&mut self, input: &mut Input) {
        let op = input.u8() % 4;
        let Some(index) = self.stream(input) else { return };
        let stream = &mut self.streams[index];
        match op {
            0 => {
                let data = input.data(16 << 10);
                let _ = stream.write(data);
            }
            1 => {
                let mut buf = [0u8; 16 << 10];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            }
            2 => {
                let _ = stream.shutdown(if input.bool() { Shutdown::Write } else { Shutdown::Read });
            }
            _ => {
                self.streams.swap_remove(index);
            }
        }
    }
}

fn run(data: &[u8], raw_queues: bool) {
    let mut input = Input::new(data);
    let mut h = Harness::new(&mut input);
    while !input.is_empty() {
        let choices = if raw_queues { 11 } else { 9 };
        match input.u8() % choices {
            0 => h.guest_packet(&mut input),
            1 => h.rx_buffers(&mut input),
            2 => h.host_connect(&mut input),
            3 => h.host_op(&mut input),
            4 => h.accept_services(),
            5 => h.wired.pump(),
            6 => {
                let mem = h.wired.mem.clone();
                for q in [RX_QUEUE, TX_QUEUE, EVENT_QUEUE] {
                    h.wired.rings[q].take_used(&mem);
                }
            }
            7 => {
                h.wired.reset();
                h.wired.activate(queue_size(&mut input));
            }
            8 => h.wired.kick(usize::from(input.u8() % 3)),
            _ => {
                let q = usize::from(input.u8() % 3);
                let mem = h.wired.mem.clone();
                h.wired.rings[q].hostile_op(&mem, &mut input);
                h.wired.kick(q);
            }
        }
    }
    h.wired.pump();
    h.accept_services();
    h.wired.pump();
}

/// Raw descriptor chains on all three queues, mixed with packets and host
/// traffic.
pub fn virtio_vsock(data: &[u8]) {
    run(data, true)
}

/// Well-formed chains carrying fuzzed packets, and host traffic: the
/// header checks, the muxer and the connection state machine.
pub fn vsock_muxer(data: &[u8]) {
    run(data, false)
}
