//! The host↔agent protocol: how the host asks the guest agent to run OCI
//! containers, and how their stdio crosses the VM boundary.
//!
//! # Transport
//!
//! The agent listens on vsock port [`AGENT_PORT`]. The host opens as many
//! stream connections as it likes (through the VMM's hybrid vsock: connect
//! to the device's Unix socket and send `CONNECT 1024\n`). Each connection
//! starts as a *control* connection: the host sends a [`Request`] frame, the
//! agent answers with one [`Response`] frame, and so on, one at a time. A
//! blocking request ([`Request::Wait`]) blocks only its connection, so a
//! host waits on one connection and signals on another.
//!
//! [`Request::AttachStdio`] turns its connection into a raw byte stream for
//! one stdio stream of one process, after the agent's `Attached` answer:
//! output streams carry the process's bytes until it closes them (then the
//! agent closes the connection); the stdin stream carries the host's bytes
//! until the host shuts down its sending side (then the agent closes the
//! process's stdin). A pty stream carries both directions. Nothing is
//! dropped or buffered without bound: a process whose output nobody reads
//! blocks once its pipe is full, the way it would on a slow terminal.
//!
//! # Frames
//!
//! A frame is an 8-byte header followed by a JSON body:
//!
//! | bytes | field |
//! |---|---|
//! | 0–1 | magic `HK` |
//! | 2–3 | protocol version, little-endian u16 ([`PROTOCOL_VERSION`]) |
//! | 4–7 | body length, little-endian u32, at most [`MAX_BODY_LEN`] |
//!
//! The header layout never changes between versions, so that each side can
//! always read the other's version and report a mismatch instead of
//! guessing at a body it does not understand: an agent receiving a request
//! of another version answers with an [`ErrorKind::VersionMismatch`] error
//! in its own version and closes the connection.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The guest vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The version this build speaks. Bump it for any change to a body's
/// meaning; both sides refuse frames of another version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The first two bytes of every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"HK";

/// The header's size in bytes.
pub const HEADER_LEN: usize = 8;

/// The largest body accepted. A full OCI runtime spec is a few KiB; the
/// bound keeps a confused or hostile peer from making the other side
/// allocate without limit.
pub const MAX_BODY_LEN: u32 = 1 << 20;

/// Identifies a container: non-empty, at most 128 bytes of
/// `[A-Za-z0-9_.-]`, not starting with `.` (it names directories and cgroups
/// in the guest).
pub type ContainerId = String;

/// A request from the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and version check; answered with [`Response::Pong`].
    Ping,
    /// Sets up a container and its init process, stopped before the user's
    /// program (OCI `create`). Answered with [`Response::Created`].
    Create(Box<CreateContainer>),
    /// Lets the init process run the user's program (OCI `start`).
    /// Answered with [`Response::Started`].
    Start { container_id: ContainerId },
    /// Runs another process in a running container. Answered with
    /// [`Response::Started`].
    Exec(Box<ExecProcess>),
    /// Sends a signal to a process: the container's init (`exec_id` None),
    /// an exec'd process, or, with `all`, every process in the container.
    /// Answered with [`Response::Done`].
    Signal {
        container_id: ContainerId,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Blocks until the process has exited; answered with
    /// [`Response::Exited`]. Any number of waiters may wait on one process,
    /// before or after it exits.
    Wait {
        container_id: ContainerId,
        #[serde(default)]
        exec_id: Option<String>,
    },
    /// Turns this connection into the byte stream of one stdio stream of a
    /// process (see the module documentation). Each stream can be attached
    /// once.
    AttachStdio {
        container_id: ContainerId,
        #[serde(default)]
        exec_id: Option<String>,
        stream: StdioStream,
    },
    /// Closes a process's stdin (the end of input), whether or not a stdin
    /// stream is attached.
    CloseStdin {
        container_id: ContainerId,
        #[serde(default)]
        exec_id: Option<String>,
    },
    /// Sets the window size of a process's pty.
    ResizePty {
        container_id: ContainerId,
        #[serde(default)]
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Resource usage of a container's cgroup; answered with
    /// [`Response::Stats`].
    Stats { container_id: ContainerId },
    /// Changes the resource limits of a created or running container (OCI
    /// `update`): each field of `resources` that is set and has a cgroup v2
    /// file (memory limit, reservation and swap; CPU shares, quota, period,
    /// cpus and mems; pids limit) is written, converted as runc converts
    /// it; fields left unset keep their values. Answered with
    /// [`Response::Done`]. Added after version 1 was fixed: an agent that
    /// predates it answers [`ErrorKind::BadRequest`].
    Update {
        container_id: ContainerId,
        /// Boxed because it dwarfs every other request.
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// Freezes (`frozen: true`) or thaws every process of a container
    /// through its cgroup (OCI `pause`/`resume`); answered with
    /// [`Response::Done`] once the cgroup reports the new state. Added
    /// after version 1 was fixed, like `update`.
    Freeze { container_id: ContainerId, frozen: bool },
    /// Configures the guest's network interfaces, routes and resolver.
    /// Applies to the whole VM; containers created afterwards that do not
    /// mount their own `/etc/resolv.conf` get the resolver configuration.
    ConfigureNetwork(NetworkConfig),
    /// Sets the VM's hostname (a container's own comes from its spec).
    SetHostname { hostname: String },
    /// Removes a container whose processes have all exited (or kills them
    /// first with `force`): its cgroup, mounts and state in the guest.
    Delete {
        container_id: ContainerId,
        #[serde(default)]
        force: bool,
    },
    /// Powers the VM off after answering; the VMM exits with status 0.
    Shutdown,
}

impl Request {
    /// The operation's name, as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Create(_) => "create",
            Self::Start { .. } => "start",
            Self::Exec(_) => "exec",
            Self::Signal { .. } => "signal",
            Self::Wait { .. } => "wait",
            Self::AttachStdio { .. } => "attach_stdio",
            Self::CloseStdin { .. } => "close_stdin",
            Self::ResizePty { .. } => "resize_pty",
            Self::Stats { .. } => "stats",
            Self::Update { .. } => "update",
            Self::Freeze { .. } => "freeze",
            Self::ConfigureNetwork(_) => "configure_network",
            Self::SetHostname { .. } => "set_hostname",
            Self::Delete { .. } => "delete",
            Self::Shutdown => "shutdown",
        }
    }
}

/// `Create`'s body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    pub container_id: ContainerId,
    /// The bundle's `config.json`. `root.path` and the sources of bind mounts
    /// are host paths; the agent maps them to the virtio-fs shares below.
    /// Hooks run on the host, so the agent ignores them; `linux.cgroupsPath`
    /// is replaced by the agent's own path for the container.
    pub spec: oci_spec::runtime::Spec,
    /// The virtio-fs tag holding the container's root file system.
    pub rootfs: RootfsShare,
    /// Host directories shared with the VM for the spec's bind mounts. A
    /// bind mount whose source lies in `host_path` is served from that
    /// share; one that lies in no share is refused.
    #[serde(default)]
    pub shares: Vec<VolumeShare>,
    /// A user name (`name`, `name:group`, `uid:group`) to resolve in the
    /// container's own `/etc/passwd` and `/etc/group`, replacing the spec's
    /// numeric `process.user` (uid, gid, additional gids; HOME when unset).
    #[serde(default)]
    pub user: Option<String>,
    pub stdio: StdioConfig,
}

/// Where the rootfs comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsShare {
    pub tag: String,
    /// Mount the share read-only (the spec's `root.readonly` also makes the
    /// container's view read-only).
    #[serde(default)]
    pub read_only: bool,
}

/// A host directory shared over virtio-fs for bind mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeShare {
    pub tag: String,
    /// The host path the spec's mount sources refer to.
    pub host_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// How a process's stdio is connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// Give the process a stdin stream (else it reads `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// Give the process a pty (its stdin, stdout and stderr) instead of
    /// pipes; the spec's `process.terminal` must agree.
    #[serde(default)]
    pub terminal: bool,
}

/// One stdio stream of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
    /// The pty master: both directions, for a process with a terminal.
    Pty,
}

impl fmt::Display for StdioStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Pty => "pty",
        })
    }
}

/// `Exec`'s body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    pub container_id: ContainerId,
    /// Names the process in later requests; unique within the container,
    /// same character rules as a container id.
    pub exec_id: String,
    /// The process to run (OCI `process`, as in `runc exec --process`).
    pub process: oci_spec::runtime::Process,
    /// As [`CreateContainer::user`].
    #[serde(default)]
    pub user: Option<String>,
    pub stdio: StdioConfig,
}

/// The guest's network configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub dns: Option<DnsConfig>,
}

/// One interface, found by its MAC address (the VMM sets the NIC's MAC
/// from the host side) or, without one, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// The guest's interface name (e.g. `eth0`); when `mac` is given too,
    /// the interface with that MAC is renamed to it.
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// IPv4 addresses with prefix length, `10.88.0.5/16`.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An IPv4 route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `0.0.0.0/0` for the default route.
    pub destination: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}

/// The resolver configuration, written as `/etc/resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Pong {
        /// The agent's crate version.
        agent_version: String,
        /// The guest's boot clock (CLOCK_BOOTTIME), µs.
        uptime_us: u64,
    },
    Created {
        /// The init process's pid in the guest (root pid namespace).
        pid: i32,
        /// The guest's boot clock (CLOCK_BOOTTIME, µs) when the request arrived, so that the
        /// host can time the guest's part of a start.
        received_us: u64,
    },
    Started {
        pid: i32,
        received_us: u64,
    },
    Exited(ExitStatus),
    /// The connection is now the requested stdio stream.
    Attached,
    Stats(ContainerStats),
    Done,
    Error(AgentError),
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// The status a shell would report: the exit code, or 128+N for a
    /// process killed by signal N.
    pub code: i32,
    /// The signal that killed the process, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The container's cgroup saw an OOM kill while the process ran.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    /// From a `waitpid` status word.
    pub fn from_wait_status(status: i32) -> Self {
        // The macros' definitions, spelled out: the api crate has no libc.
        let signal = status & 0x7f;
        if signal == 0 {
            Self { code: (status >> 8) & 0xff, signal: None, oom_killed: false }
        } else {
            Self { code: 128 + signal, signal: Some(signal), oom_killed: false }
        }
    }
}

/// A container's cgroup counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    pub memory_current_bytes: u64,
    /// None: unlimited.
    pub memory_max_bytes: Option<u64>,
    pub memory_oom_kills: u64,
    pub cpu_usage_us: u64,
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    pub pids_current: u64,
    /// None: unlimited.
    pub pids_max: Option<u64>,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for AgentError {}

/// The class of an [`AgentError`], for callers that act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// The frame or its body could not be decoded.
    BadRequest,
    /// No such container or process.
    NotFound,
    /// The container or process id is taken.
    AlreadyExists,
    /// The request does not fit the container's state (start twice, exec
    /// into a stopped container, attach a stream twice, …).
    InvalidState,
    /// The spec or its shares cannot be set up in the guest.
    InvalidSpec,
    /// The guest failed doing what was asked.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VersionMismatch => "protocol version mismatch",
            Self::BadRequest => "bad request",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::InvalidState => "invalid state",
            Self::InvalidSpec => "invalid spec",
            Self::Internal => "agent failure",
        })
    }
}

/// Checks a container or exec id (see [`ContainerId`]).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("id {id:?} must be 1 to 128 bytes long"));
    }
    if id.starts_with('.') || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(format!("id {id:?} may hold only letters, digits, '_', '.' and '-', and not start with '.'"));
    }
    Ok(())
}

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("not a husk agent protocol frame (magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("the peer speaks protocol version {peer}, this side {ours}")]
    VersionMismatch { peer: u16, ours: u16 },
    #[error("frame body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLong(u32),
    #[error("undecodable frame body: {0}")]
    Body(serde_json::Error),
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub len: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[..2].copy_from_slice(&FRAME_MAGIC);
        bytes[2..4].copy_from_slice(&self.version.to_le_bytes());
        bytes[4..].copy_from_slice(&self.len.to_le_bytes());
        bytes
    }

    /// Decodes and checks magic and length; the version is left to the
    /// caller, who may want to answer a mismatch.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        if bytes[..2] != FRAME_MAGIC {
            return Err(FrameError::BadMagic([bytes[0], bytes[1]]));
        }
        let version = u16::from_le_bytes([bytes[2], bytes[3]]);
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if len > MAX_BODY_LEN {
            return Err(FrameError::TooLong(len));
        }
        Ok(Self { version, len })
    }
}

/// Writes one frame of this side's version.
pub fn write_frame<T: Serialize>(writer: &mut impl Write, body: &T) -> Result<(), FrameError> {
    let json = serde_json::to_vec(body).map_err(FrameError::Body)?;
    let len = u32::try_from(json.len()).ok().filter(|len| *len <= MAX_BODY_LEN).ok_or(FrameError::TooLong(u32::MAX))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + json.len());
    frame.extend_from_slice(&FrameHeader { version: PROTOCOL_VERSION, len }.encode());
    frame.extend_from_slice(&json);
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame's header and body. A clean end of the connection before
/// the first header byte is [`FrameError::Closed`].
pub fn read_raw_frame(reader: &mut impl Read) -> Result<(FrameHeader, Vec<u8>), FrameError> {
    let mut header = [0; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    let header = FrameHeader::decode(&header)?;
    let mut body = vec![0; header.len as usize];
    reader.read_exact(&mut body)?;
    Ok((header, body))
}

/// Reads one frame of this side's version and decodes its body.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<T, FrameError> {
    let (header, body) = read_raw_frame(reader)?;
    decode_body(header, &body)
}

/// Decodes a frame's body after checking its version.
pub fn decode_body<T: DeserializeOwned>(header: FrameHeader, body: &[u8]) -> Result<T, FrameError> {
    if header.version != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch { peer: header.version, ours: PROTOCOL_VERSION });
    }
    serde_json::from_slice(body).map_err(FrameError::Body)
}

/// Environment entries (`KEY=value`) as a map, last one winning, the way a
/// process sees duplicates.
pub fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|entry| entry.split_once('=').map(|(key, value)| (key.to_owned(), value.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(request: &Request) -> Request {
        let mut wire = Vec::new();
        write_frame(&mut wire, request).unwrap();
        read_frame(&mut wire.as_slice()).unwrap()
    }

    #[test]
    fn requests_survive_the_wire() {
        for request in [
            Request::Ping,
            Request::Start { container_id: "c1".into() },
            Request::Signal { container_id: "c1".into(), exec_id: Some("e1".into()), signal: 15, all: false },
            Request::AttachStdio { container_id: "c1".into(), exec_id: None, stream: StdioStream::Pty },
            Request::ResizePty { container_id: "c1".into(), exec_id: None, rows: 40, cols: 120 },
            Request::Update {
                container_id: "c1".into(),
                resources: Box::new(
                    serde_json::from_value(serde_json::json!({
                        "memory": { "limit": 50331648, "swap": -1 },
                        "cpu": { "shares": 512, "quota": 50000, "period": 100000, "cpus": "0" },
                        "pids": { "limit": 20 },
                    }))
                    .unwrap(),
                ),
            },
            Request::Freeze { container_id: "c1".into(), frozen: true },
            Request::ConfigureNetwork(NetworkConfig {
                interfaces: vec![InterfaceConfig {
                    name: "eth0".into(),
                    mac: Some("06:00:0a:00:00:02".into()),
                    addresses: vec!["10.0.0.2/24".into()],
                    mtu: Some(1500),
                }],
                routes: vec![RouteConfig {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("10.0.0.1".into()),
                    device: None,
                }],
                dns: Some(DnsConfig { nameservers: vec!["10.0.0.1".into()], ..Default::default() }),
            }),
            Request::Shutdown,
        ] {
            assert_eq!(roundtrip(&request), request);
        }
    }

    #[test]
    fn an_update_carries_oci_linux_resources() {
        let body = br#"{"op":"update","container_id":"c1","resources":{"memory":{"limit":-1},"pids":{"limit":5}}}"#;
        let request: Request = serde_json::from_slice(body).unwrap();
        assert_eq!(request.op(), "update");
        let Request::Update { container_id, resources } = request else { panic!("decoded as {request:?}") };
        assert_eq!(container_id, "c1");
        assert_eq!(resources.memory().as_ref().and_then(|m| m.limit()), Some(-1));
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(5));
        assert!(resources.cpu().is_none());
    }

    #[test]
    fn a_create_carries_a_whole_oci_spec() {
        let spec = oci_spec::runtime::Spec::default();
        let request = Request::Create(Box::new(CreateContainer {
            container_id: "web".into(),
            spec,
            rootfs: RootfsShare { tag: "rootfs".into(), read_only: true },
            shares: vec![VolumeShare { tag: "vol0".into(), host_path: "/srv/data".into(), read_only: false }],
            user: Some("guest:audio".into()),
            stdio: StdioConfig { stdin: true, terminal: false },
        }));
        assert_eq!(roundtrip(&request), request);
    }

    #[test]
    fn the_header_is_fixed_and_checked() {
        let header = FrameHeader { version: 7, len: 3 };
        assert_eq!(header.encode(), *b"HK\x07\x00\x03\x00\x00\x00");
        assert_eq!(FrameHeader::decode(&header.encode()).unwrap(), header);
        assert!(matches!(FrameHeader::decode(b"GET / HT"), Err(FrameError::BadMagic(_))));
        let huge = FrameHeader { version: 1, len: MAX_BODY_LEN + 1 }.encode();
        assert!(matches!(FrameHeader::decode(&huge), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn another_version_is_reported_not_guessed() {
        let mut wire = FrameHeader { version: PROTOCOL_VERSION + 1, len: 13 }.encode().to_vec();
        wire.extend_from_slice(br#"{"op":"ping"}"#);
        match read_frame::<Request>(&mut wire.as_slice()) {
            Err(FrameError::VersionMismatch { peer, ours }) => {
                assert_eq!((peer, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
            }
            other => panic!("expected a version mismatch, got {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request::Ping).unwrap();
        assert!(matches!(read_frame::<Request>(&mut &wire[..wire.len() - 1]), Err(FrameError::Io(_))));
        assert!(matches!(read_frame::<Request>(&mut &wire[..3]), Err(FrameError::Io(_))));
        assert!(matches!(read_frame::<Request>(&mut &b""[..]), Err(FrameError::Closed)));
        let mut garbage = FrameHeader { version: PROTOCOL_VERSION, len: 9 }.encode().to_vec();
        garbage.extend_from_slice(b"{\"op\":42}");
        assert!(matches!(read_frame::<Request>(&mut garbage.as_slice()), Err(FrameError::Body(_))));
        let mut unknown = FrameHeader { version: PROTOCOL_VERSION, len: 19 }.encode().to_vec();
        unknown.extend_from_slice(b"{\"op\":\"format_c\"}  ");
        assert!(matches!(read_frame::<Request>(&mut unknown.as_slice()), Err(FrameError::Body(_))));
    }

    #[test]
    fn exit_statuses_follow_the_shell() {
        assert_eq!(ExitStatus::from_wait_status(42 << 8), ExitStatus { code: 42, signal: None, oom_killed: false });
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus { code: 137, signal: Some(9), oom_killed: false });
        assert_eq!(
            ExitStatus::from_wait_status(15 | 0x80),
            ExitStatus { code: 143, signal: Some(15), oom_killed: false }
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("web-1_a.b").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
