//! The host side of the agent protocol ([`husk_api::agent_protocol`]).
//!
//! The guest's vsock is reached through the VMM's hybrid vsock socket: a
//! connection to it becomes a stream to guest port [`AGENT_PORT`] after the
//! `CONNECT 1024\n` / `OK <host port>\n` exchange. Quick requests share one
//! control connection, opened on first use and reopened when it broke;
//! each [`AgentClient::wait`] and [`AgentClient::attach`] gets a connection
//! of its own, since it holds it for as long as the process runs.
//!
//! The client writes to sockets whose peer may be gone; like every Rust
//! program by default, the process must ignore `SIGPIPE` so that this is
//! an error rather than its death.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use husk_api::agent_protocol::{
    read_frame, write_frame, AgentError, ContainerStats, CreateContainer, ExecProcess, ExitStatus, FrameError,
    NetworkConfig, Request, Response, StdioStream, AGENT_PORT,
};
use oci_spec::runtime::LinuxResources;

/// How long a control request may wait for its answer (and the VMM for
/// the guest to take a new connection). Creating a container in an
/// emulated guest without KVM takes seconds; this only catches a hung
/// agent.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The pause between two attempts of [`AgentClient::wait_ready`]: short,
/// because the agent's start is on the path of every container start.
const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Socket timeouts of zero mean "none" to the kernel and are refused by
/// std, so shorter ones are rounded up to this.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// `OK 4294967295\n` is 14 bytes; a longer answer is not the VMM's.
const HANDSHAKE_ANSWER_MAX: usize = 32;

/// The agent's answer to a ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The agent's crate version.
    pub agent_version: String,
    /// Guest CLOCK_MONOTONIC, µs.
    pub uptime_us: u64,
}

/// A process the agent created or started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The process's pid in the guest's root pid namespace.
    pub pid: i32,
    /// Guest CLOCK_MONOTONIC (µs) when the agent received the request.
    pub received_us: u64,
}

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VMM's vsock socket could not be reached, or the connection
    /// failed during the `CONNECT` handshake.
    #[error("connecting to the guest agent through {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// The VMM answered `CONNECT` with something other than `OK`: nothing
    /// listens on the agent's port in the guest (yet).
    #[error("the VMM at {} refused the connection to the guest agent: {}", path.display(), describe_answer(answer))]
    Handshake { path: PathBuf, answer: String },
    /// The connection broke, timed out or carried something that is not a
    /// frame of this protocol version.
    #[error("agent request {op}: {source}")]
    Frame { op: &'static str, source: FrameError },
    /// The agent refused or failed the request.
    #[error("agent request {op} failed: {source}")]
    Agent { op: &'static str, source: AgentError },
    /// The agent answered with a valid response that does not belong to
    /// the request.
    #[error("agent request {op}: unexpected answer {got}")]
    Unexpected { op: &'static str, got: String },
    /// [`AgentClient::wait_ready`] gave up.
    #[error("the guest agent behind {} did not answer within {waited:?}; last attempt: {last}", path.display())]
    Timeout { path: PathBuf, waited: Duration, last: String },
}

fn describe_answer(answer: &str) -> String {
    if answer.is_empty() {
        "it closed the connection".to_owned()
    } else {
        format!("it answered {answer:?}")
    }
}

/// A client of one VM's guest agent.
///
/// Methods take `&self` and may be called from several threads at once: a
/// request that finds the control connection in use by another opens a
/// connection of its own, rather than queue behind a slow `create`.
#[derive(Debug)]
pub struct AgentClient {
    uds_path: PathBuf,
    /// Present only between requests: a request takes it out while it
    /// runs, so a panic or an error mid-request never leaves a connection
    /// with half an answer in it for the next one.
    control: Mutex<Option<UnixStream>>,
    request_timeout: Duration,
}

impl AgentClient {
    /// A client for the agent behind the VMM's hybrid vsock socket
    /// `uds_path`. Connects on the first request.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        Self { uds_path: uds_path.into(), control: Mutex::new(None), request_timeout: DEFAULT_REQUEST_TIMEOUT }
    }

    /// Waits for the agent of a booting VM: connects and pings every few
    /// milliseconds until it answers or `timeout` has passed. Failures
    /// that mean "not there yet" (no socket, the handshake refused, the
    /// connection closed or reset) are retried; any other is returned at
    /// once.
    pub fn wait_ready(uds_path: impl Into<PathBuf>, timeout: Duration) -> Result<(Self, Pong), ClientError> {
        let client = Self::new(uds_path);
        let started = Instant::now();
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            let last = match client.ping_once(remaining.clamp(MIN_TIMEOUT, client.request_timeout)) {
                Ok((stream, pong)) => {
                    if set_timeouts(&stream, Some(client.request_timeout)).is_ok() {
                        *client.lock_control() = Some(stream);
                    }
                    return Ok((client, pong));
                }
                Err(err) if not_ready(&err) => err,
                Err(err) => return Err(err),
            };
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(ClientError::Timeout { path: client.uds_path, waited, last: last.to_string() });
            }
            thread::sleep(RETRY_INTERVAL.min(timeout - waited));
        }
    }

    /// The VMM's hybrid vsock socket.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// How long a control request waits for its answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sets how long a control request (and the VMM's handshake for any
    /// connection) waits for its answer; at least 1 ms.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout.max(MIN_TIMEOUT);
        let control = self.control.get_mut().unwrap_or_else(PoisonError::into_inner);
        if control.as_ref().is_some_and(|stream| set_timeouts(stream, Some(self.request_timeout)).is_err()) {
            *control = None;
        }
    }

    /// Checks that the agent answers; returns its version and uptime.
    pub fn ping(&self) -> Result<Pong, ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong { agent_version, uptime_us } => Ok(Pong { agent_version, uptime_us }),
            other => Err(refusal("ping", other)),
        }
    }

    /// Sets up a container, its init process stopped before the user's
    /// program (OCI `create`).
    pub fn create(&self, container: CreateContainer) -> Result<Started, ClientError> {
        match self.call(&Request::Create(Box::new(container)))? {
            Response::Created { pid, received_us } => Ok(Started { pid, received_us }),
            other => Err(refusal("create", other)),
        }
    }

    /// Lets a created container's init process run the user's program
    /// (OCI `start`).
    pub fn start(&self, container_id: &str) -> Result<Started, ClientError> {
        self.started(Request::Start { container_id: container_id.to_owned() })
    }

    /// Runs another process in a running container.
    pub fn exec(&self, process: ExecProcess) -> Result<Started, ClientError> {
        self.started(Request::Exec(Box::new(process)))
    }

    /// Signals the container's init (`exec_id` None) or an exec'd process,
    /// or with `all` every process in the container.
    pub fn signal(&self, container_id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<(), ClientError> {
        self.done(Request::Signal {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            signal,
            all,
        })
    }

    /// Blocks until the process has exited, on a connection of its own
    /// without a timeout: containers run for as long as they like.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<ExitStatus, ClientError> {
        let request = Request::Wait { container_id: container_id.to_owned(), exec_id: exec_id.map(str::to_owned) };
        let op = request.op();
        let mut stream = self.open(self.request_timeout)?;
        send(&mut stream, &request)?;
        stream.set_read_timeout(None).map_err(|err| ClientError::Frame { op, source: err.into() })?;
        match receive(&mut stream, op, None)? {
            Response::Exited(status) => Ok(status),
            other => Err(refusal(op, other)),
        }
    }

    /// Opens a connection carrying the raw bytes of one stdio stream of a
    /// process. For stdin, write to it and `shutdown(Write)` at the end of
    /// input; for stdout and stderr, read it to its end; a pty goes both
    /// ways. The stream has no timeouts.
    pub fn attach(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<UnixStream, ClientError> {
        let request =
            Request::AttachStdio { container_id: container_id.to_owned(), exec_id: exec_id.map(str::to_owned), stream };
        let op = request.op();
        let mut connection = self.open(self.request_timeout)?;
        send(&mut connection, &request)?;
        match receive(&mut connection, op, Some(self.request_timeout))? {
            Response::Attached => {}
            other => return Err(refusal(op, other)),
        }
        // A stdin writer may block for hours on a process that does not
        // read, an output reader on one that prints nothing.
        set_timeouts(&connection, None).map_err(|err| ClientError::Frame { op, source: err.into() })?;
        Ok(connection)
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<(), ClientError> {
        self.done(Request::CloseStdin { container_id: container_id.to_owned(), exec_id: exec_id.map(str::to_owned) })
    }

    /// Sets the window size of a process's pty.
    pub fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        self.done(Request::ResizePty {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            rows,
            cols,
        })
    }

    /// The container's cgroup counters.
    pub fn stats(&self, container_id: &str) -> Result<ContainerStats, ClientError> {
        match self.call(&Request::Stats { container_id: container_id.to_owned() })? {
            Response::Stats(stats) => Ok(stats),
            other => Err(refusal("stats", other)),
        }
    }

    /// Changes a created or running container's resource limits (OCI
    /// `update`): the agent writes each field that is set to the
    /// container's cgroup and leaves the others as they are. An agent that
    /// predates the operation refuses it as a bad request.
    pub fn update(&self, container_id: &str, resources: LinuxResources) -> Result<(), ClientError> {
        self.done(Request::Update { container_id: container_id.to_owned(), resources: Box::new(resources) })
    }

    /// Freezes or thaws every process of a container (OCI pause/resume).
    pub fn freeze(&self, container_id: &str, frozen: bool) -> Result<(), ClientError> {
        self.done(Request::Freeze { container_id: container_id.to_owned(), frozen })
    }

    /// Configures the guest's interfaces, routes and resolver.
    pub fn configure_network(&self, config: NetworkConfig) -> Result<(), ClientError> {
        self.done(Request::ConfigureNetwork(config))
    }

    /// Sets the VM's hostname.
    pub fn set_hostname(&self, hostname: &str) -> Result<(), ClientError> {
        self.done(Request::SetHostname { hostname: hostname.to_owned() })
    }

    /// Removes a container whose processes have exited (with `force`,
    /// killing them first).
    pub fn delete(&self, container_id: &str, force: bool) -> Result<(), ClientError> {
        self.done(Request::Delete { container_id: container_id.to_owned(), force })
    }

    /// Asks the agent to power the VM off. The agent answers before it
    /// does, but the connection may well go down before the answer
    /// arrives: a connection closed after the request was sent counts as
    /// success. One that cannot be opened or sent on does not: whether
    /// the VM is gone already is for the caller to tell.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        let request = Request::Shutdown;
        let op = request.op();
        // Not put back: whatever the outcome, the VM is on its way down.
        let mut stream = self.control_connection()?;
        send(&mut stream, &request)?;
        match receive(&mut stream, op, Some(self.request_timeout)) {
            Ok(Response::Done) => Ok(()),
            Ok(other) => Err(refusal(op, other)),
            Err(ClientError::Frame { source, .. }) if is_closed(&source) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn started(&self, request: Request) -> Result<Started, ClientError> {
        let op = request.op();
        match self.call(&request)? {
            Response::Started { pid, received_us } => Ok(Started { pid, received_us }),
            other => Err(refusal(op, other)),
        }
    }

    fn done(&self, request: Request) -> Result<(), ClientError> {
        let op = request.op();
        match self.call(&request)? {
            Response::Done => Ok(()),
            other => Err(refusal(op, other)),
        }
    }

    /// One request and its answer on the control connection.
    fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let op = request.op();
        let mut stream = self.control_connection()?;
        send(&mut stream, request)?;
        let response = receive(&mut stream, op, Some(self.request_timeout))?;
        // Only a connection that delivered a whole answer is in step for
        // the next request. Another thread may have put its own back
        // meanwhile; one is enough.
        self.lock_control().get_or_insert(stream);
        Ok(response)
    }

    /// Takes the control connection out of its slot, or opens one.
    fn control_connection(&self) -> Result<UnixStream, ClientError> {
        let reusable = self.lock_control().take().filter(still_open);
        match reusable {
            Some(stream) => Ok(stream),
            None => self.open(self.request_timeout),
        }
    }

    /// Pings on a fresh connection, `timeout` bounding each step.
    fn ping_once(&self, timeout: Duration) -> Result<(UnixStream, Pong), ClientError> {
        let mut stream = self.open(timeout)?;
        send(&mut stream, &Request::Ping)?;
        match receive(&mut stream, "ping", Some(timeout))? {
            Response::Pong { agent_version, uptime_us } => Ok((stream, Pong { agent_version, uptime_us })),
            other => Err(refusal("ping", other)),
        }
    }

    /// Opens a connection to the agent's port, with `timeout` as its read
    /// and write timeouts.
    fn open(&self, timeout: Duration) -> Result<UnixStream, ClientError> {
        let connect_error = |source| ClientError::Connect { path: self.uds_path.clone(), source };
        let mut stream = UnixStream::connect(&self.uds_path).map_err(connect_error)?;
        set_timeouts(&stream, Some(timeout)).map_err(connect_error)?;
        stream.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes()).map_err(connect_error)?;
        // A byte at a time: the agent's frames follow the line directly,
        // and a buffered reader would swallow their beginning.
        let mut answer = Vec::with_capacity(HANDSHAKE_ANSWER_MAX);
        while answer.last() != Some(&b'\n') && answer.len() < HANDSHAKE_ANSWER_MAX {
            let mut byte = [0];
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => answer.push(byte[0]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(connect_error(timed_out(err, "no answer to CONNECT", timeout))),
            }
        }
        if is_ok_line(&answer) {
            Ok(stream)
        } else {
            Err(ClientError::Handshake {
                path: self.uds_path.clone(),
                answer: String::from_utf8_lossy(&answer).into_owned(),
            })
        }
    }

    fn lock_control(&self) -> MutexGuard<'_, Option<UnixStream>> {
        // The slot holds a connection only between requests (see
        // `control`), so a panic elsewhere cannot have left it inconsistent.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `OK <host port>\n`, as the VMM answers a `CONNECT` the guest accepted.
fn is_ok_line(line: &[u8]) -> bool {
    line.strip_prefix(b"OK ")
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .and_then(|port| std::str::from_utf8(port).ok())
        .is_some_and(|port| port.parse::<u32>().is_ok())
}

/// Whether a connection left idle is still worth sending a request on.
/// The agent (or the VMM, for a guest that went away) may have closed it
/// since; sending a request into it would be lost, and sending it again on
/// a new connection is not safe for requests like `create` or `signal`
/// that the agent might have acted on.
fn still_open(stream: &UnixStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut reader = stream;
    let mut byte = [0];
    // Only "nothing to read" means open: an end of stream is a closed
    // connection, and bytes nobody asked for put it out of step.
    let idle = matches!(reader.read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && idle
}

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> io::Result<()> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

/// A socket timeout surfaces as `WouldBlock`, whose message ("resource
/// temporarily unavailable") would send a reader looking in the wrong place.
fn timed_out(err: io::Error, what: &str, timeout: Duration) -> io::Error {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("{what} within {timeout:?}"))
        }
        _ => err,
    }
}

fn send(stream: &mut UnixStream, request: &Request) -> Result<(), ClientError> {
    write_frame(stream, request).map_err(|source| ClientError::Frame { op: request.op(), source })
}

fn receive(stream: &mut UnixStream, op: &'static str, timeout: Option<Duration>) -> Result<Response, ClientError> {
    read_frame(stream).map_err(|source| {
        let source = match (source, timeout) {
            (FrameError::Io(err), Some(timeout)) => FrameError::Io(timed_out(err, "no answer", timeout)),
            (source, _) => source,
        };
        ClientError::Frame { op, source }
    })
}

/// The error for a response that is not the one `op` expects.
fn refusal(op: &'static str, response: Response) -> ClientError {
    match response {
        Response::Error(source) => ClientError::Agent { op, source },
        other => ClientError::Unexpected { op, got: format!("{other:?}") },
    }
}

/// The connection ended (cleanly or not) where an answer should have been.
fn is_closed(err: &FrameError) -> bool {
    match err {
        FrameError::Closed => true,
        FrameError::Io(err) => matches!(err.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof),
        _ => false,
    }
}

/// Failures of a VM whose agent is not up yet, worth another attempt.
fn not_ready(err: &ClientError) -> bool {
    match err {
        ClientError::Connect { .. } | ClientError::Handshake { .. } => true,
        ClientError::Frame { source, .. } => matches!(source, FrameError::Closed | FrameError::Io(_)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    use husk_api::agent_protocol::{read_raw_frame, ErrorKind, FrameHeader, PROTOCOL_VERSION};

    use super::*;

    /// A directory of the test's own, for the fake VMM's socket.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("husk-runtime-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(name);
            // A leftover of an earlier run with the same pid.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Self(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("vsock.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_connect_line(stream: &mut UnixStream) {
        let mut line = Vec::new();
        while line.last() != Some(&b'\n') {
            let mut byte = [0];
            stream.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert_eq!(line, format!("CONNECT {AGENT_PORT}\n").into_bytes());
    }

    /// The VMM's side of the handshake when the guest accepts.
    fn accept_handshake(stream: &mut UnixStream) {
        read_connect_line(stream);
        stream.write_all(b"OK 1073741824\n").unwrap();
    }

    /// A fake VMM with the agent behind it: accepts `connections`
    /// connections, each handled on a thread of its own after the
    /// handshake. Joining the returned thread re-raises the handlers'
    /// panics; further connections are refused.
    fn fake_agent(
        path: &Path,
        connections: usize,
        handle: impl Fn(usize, UnixStream) + Send + Sync + 'static,
    ) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        let handle = Arc::new(handle);
        thread::spawn(move || {
            let mut handlers = Vec::new();
            for index in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let handle = handle.clone();
                handlers.push(thread::spawn(move || {
                    accept_handshake(&mut stream);
                    handle(index, stream);
                }));
            }
            for handler in handlers {
                handler.join().unwrap();
            }
        })
    }

    /// Answers requests until the client closes the connection, or drops
    /// it where `answer` gives none.
    fn serve(mut stream: UnixStream, mut answer: impl FnMut(Request) -> Option<Response>) {
        loop {
            let request = match read_frame::<Request>(&mut stream) {
                Ok(request) => request,
                Err(FrameError::Closed) => return,
                Err(err) => panic!("the fake agent could not read a request: {err}"),
            };
            match answer(request) {
                Some(response) => write_frame(&mut stream, &response).unwrap(),
                None => return,
            }
        }
    }

    fn pong() -> Response {
        Response::Pong { agent_version: "0.1.0-fake".into(), uptime_us: 1234 }
    }

    fn pong_to_pings(request: Request) -> Option<Response> {
        assert_eq!(request, Request::Ping);
        Some(pong())
    }

    fn frame(response: &Response) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, response).unwrap();
        bytes
    }

    fn create_request(id: &str) -> CreateContainer {
        serde_json::from_value(serde_json::json!({
            "container_id": id,
            "spec": { "ociVersion": "1.0.2", "process": { "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 } } },
            "rootfs": { "tag": "rootfs" },
            "stdio": { "stdin": true },
        }))
        .unwrap()
    }

    #[test]
    fn frames_right_after_the_handshake_line_are_not_lost() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let fake = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_connect_line(&mut stream);
            // The answer to the ping in the same write as the OK line.
            let mut bytes = b"OK 1073741824\n".to_vec();
            bytes.extend(frame(&pong()));
            stream.write_all(&bytes).unwrap();
            assert_eq!(read_frame::<Request>(&mut stream).unwrap(), Request::Ping);
            assert!(matches!(read_frame::<Request>(&mut stream), Err(FrameError::Closed)));
        });
        let client = AgentClient::new(dir.socket());
        assert_eq!(client.ping().unwrap(), Pong { agent_version: "0.1.0-fake".into(), uptime_us: 1234 });
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn a_refused_handshake_is_reported_with_the_answer() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let fake = thread::spawn(move || {
            let answers: [&[u8]; 3] = [b"ERR no listener\n", b"", &[b'x'; 40]];
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                read_connect_line(&mut stream);
                stream.write_all(answer).unwrap();
            }
        });
        let client = AgentClient::new(dir.socket());
        for expected in ["ERR no listener\n", "", &"x".repeat(HANDSHAKE_ANSWER_MAX)] {
            match client.ping() {
                Err(ClientError::Handshake { path, answer }) => {
                    assert_eq!(path, dir.socket());
                    assert_eq!(answer, expected);
                }
                other => panic!("expected a refused handshake, got {other:?}"),
            }
        }
        fake.join().unwrap();
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = TempDir::new();
        match AgentClient::new(dir.socket()).ping() {
            Err(ClientError::Connect { path, source }) => {
                assert_eq!(path, dir.socket());
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn wait_ready_retries_until_the_agent_answers() {
        let dir = TempDir::new();
        let path = dir.socket();
        let fake = thread::spawn(move || {
            // First no VMM socket at all, then a VMM whose guest does not
            // listen yet: it closes connections after their CONNECT line.
            thread::sleep(Duration::from_millis(50));
            let listener = UnixListener::bind(&path).unwrap();
            for _ in 0..3 {
                let (mut stream, _) = listener.accept().unwrap();
                read_connect_line(&mut stream);
            }
            let (mut stream, _) = listener.accept().unwrap();
            accept_handshake(&mut stream);
            serve(stream, pong_to_pings);
        });
        let started = Instant::now();
        let (client, pong) = AgentClient::wait_ready(dir.socket(), Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(pong.uptime_us, 1234);
        // The ping's connection is the control connection: the fake
        // accepts no other.
        client.ping().unwrap();
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn wait_ready_gives_up_after_its_timeout() {
        let dir = TempDir::new();
        let timeout = Duration::from_millis(100);
        match AgentClient::wait_ready(dir.socket(), timeout) {
            Err(ClientError::Timeout { path, waited, last }) => {
                assert_eq!(path, dir.socket());
                assert!(waited >= timeout, "{waited:?}");
                assert!(last.contains("connecting"), "{last}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn wait_ready_does_not_retry_a_version_mismatch() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, mut stream| {
            read_frame::<Request>(&mut stream).unwrap();
            let body = br#"{"result":"pong","agent_version":"9","uptime_us":1}"#;
            let mut bytes = FrameHeader { version: PROTOCOL_VERSION + 1, len: body.len() as u32 }.encode().to_vec();
            bytes.extend_from_slice(body);
            stream.write_all(&bytes).unwrap();
        });
        let err = AgentClient::wait_ready(dir.socket(), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, ClientError::Frame { source: FrameError::VersionMismatch { .. }, .. }), "{err:?}");
        fake.join().unwrap();
    }

    #[test]
    fn create_and_start_return_the_pid() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, stream| {
            serve(stream, |request| match request {
                Request::Create(create) => {
                    assert_eq!(*create, create_request("web"));
                    Some(Response::Created { pid: 42, received_us: 1000 })
                }
                Request::Start { container_id } => {
                    assert_eq!(container_id, "web");
                    Some(Response::Started { pid: 42, received_us: 2000 })
                }
                other => panic!("unexpected {other:?}"),
            })
        });
        let client = AgentClient::new(dir.socket());
        assert_eq!(client.create(create_request("web")).unwrap(), Started { pid: 42, received_us: 1000 });
        assert_eq!(client.start("web").unwrap(), Started { pid: 42, received_us: 2000 });
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn each_method_sends_its_request() {
        let dir = TempDir::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stats = ContainerStats { memory_current_bytes: 4096, pids_current: 3, ..Default::default() };
        let fake = fake_agent(&dir.socket(), 1, {
            let seen = seen.clone();
            move |_, stream| {
                serve(stream, |request| {
                    let response = match &request {
                        Request::Exec(_) => Response::Started { pid: 77, received_us: 5 },
                        Request::Stats { .. } => Response::Stats(stats),
                        _ => Response::Done,
                    };
                    seen.lock().unwrap().push(request);
                    Some(response)
                })
            }
        });
        let exec: ExecProcess = serde_json::from_value(serde_json::json!({
            "container_id": "web",
            "exec_id": "e1",
            "process": { "args": ["ls"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "stdio": { "terminal": true },
        }))
        .unwrap();
        let network = NetworkConfig::default();
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": { "limit": 50331648 },
            "pids": { "limit": 20 },
        }))
        .unwrap();
        let client = AgentClient::new(dir.socket());
        assert_eq!(client.exec(exec.clone()).unwrap(), Started { pid: 77, received_us: 5 });
        client.signal("web", Some("e1"), 15, false).unwrap();
        client.signal("web", None, 9, true).unwrap();
        client.close_stdin("web", Some("e1")).unwrap();
        client.resize_pty("web", Some("e1"), 40, 120).unwrap();
        assert_eq!(client.stats("web").unwrap(), stats);
        client.update("web", resources.clone()).unwrap();
        client.configure_network(network.clone()).unwrap();
        client.set_hostname("box").unwrap();
        client.delete("web", true).unwrap();
        drop(client);
        fake.join().unwrap();
        let web = || "web".to_owned();
        let e1 = || Some("e1".to_owned());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Request::Exec(Box::new(exec)),
                Request::Signal { container_id: web(), exec_id: e1(), signal: 15, all: false },
                Request::Signal { container_id: web(), exec_id: None, signal: 9, all: true },
                Request::CloseStdin { container_id: web(), exec_id: e1() },
                Request::ResizePty { container_id: web(), exec_id: e1(), rows: 40, cols: 120 },
                Request::Stats { container_id: web() },
                Request::Update { container_id: web(), resources: Box::new(resources) },
                Request::ConfigureNetwork(network),
                Request::SetHostname { hostname: "box".into() },
                Request::Delete { container_id: web(), force: true },
            ]
        );
    }

    #[test]
    fn update_sends_oci_resources_and_reports_an_older_agents_refusal() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, mut stream| {
            let (_, body) = read_raw_frame(&mut stream).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({
                    "op": "update",
                    "container_id": "web",
                    "resources": { "memory": { "limit": 50331648 }, "cpu": { "quota": 50000, "period": 100000 } },
                })
            );
            write_frame(&mut stream, &Response::Done).unwrap();
            // What an agent from before the operation answers.
            read_raw_frame(&mut stream).unwrap();
            let refusal = AgentError { kind: ErrorKind::BadRequest, message: "unknown variant `update`".into() };
            write_frame(&mut stream, &Response::Error(refusal)).unwrap();
            assert!(matches!(read_raw_frame(&mut stream), Err(FrameError::Closed)));
        });
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": { "limit": 50331648 },
            "cpu": { "quota": 50000, "period": 100000 },
        }))
        .unwrap();
        let client = AgentClient::new(dir.socket());
        client.update("web", resources.clone()).unwrap();
        match client.update("web", resources) {
            Err(ClientError::Agent { op: "update", source }) => assert_eq!(source.kind, ErrorKind::BadRequest),
            other => panic!("expected the agent's refusal, got {other:?}"),
        }
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn wait_blocks_on_a_connection_of_its_own() {
        let dir = TempDir::new();
        let (killed, exit) = mpsc::channel();
        let exit = Mutex::new(exit);
        let fake = fake_agent(&dir.socket(), 2, move |_, stream| {
            serve(stream, |request| match request {
                Request::Wait { container_id, exec_id: None } if container_id == "web" => {
                    exit.lock().unwrap().recv().unwrap();
                    Some(Response::Exited(ExitStatus::from_wait_status(15)))
                }
                Request::Signal { signal: 15, .. } => {
                    killed.send(()).unwrap();
                    Some(Response::Done)
                }
                other => panic!("unexpected {other:?}"),
            })
        });
        let client = AgentClient::new(dir.socket());
        thread::scope(|scope| {
            let waiter = scope.spawn(|| client.wait("web", None));
            // Whichever connects first, the waiter cannot hold up the signal.
            client.signal("web", None, 15, false).unwrap();
            assert_eq!(waiter.join().unwrap().unwrap(), ExitStatus { code: 143, signal: Some(15), oom_killed: false });
        });
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn an_agent_error_keeps_its_kind_and_message() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, stream| {
            serve(stream, |request| match request {
                Request::Start { .. } => Some(Response::Error(AgentError {
                    kind: ErrorKind::NotFound,
                    message: "no container \"ghost\"".into(),
                })),
                request => pong_to_pings(request),
            })
        });
        let client = AgentClient::new(dir.socket());
        match client.start("ghost") {
            Err(err @ ClientError::Agent { op: "start", .. }) => {
                assert_eq!(err.to_string(), "agent request start failed: not found: no container \"ghost\"");
                let ClientError::Agent { source, .. } = err else { unreachable!() };
                assert_eq!(source.kind, ErrorKind::NotFound);
                assert_eq!(source.message, "no container \"ghost\"");
            }
            other => panic!("expected the agent's error, got {other:?}"),
        }
        // The connection stays usable.
        client.ping().unwrap();
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn a_wrong_answer_is_unexpected() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, stream| {
            let mut answered = false;
            serve(stream, |request| {
                assert_eq!(request, Request::Ping);
                Some(if std::mem::replace(&mut answered, true) { pong() } else { Response::Attached })
            })
        });
        let client = AgentClient::new(dir.socket());
        match client.ping() {
            Err(ClientError::Unexpected { op, got }) => assert_eq!((op, got.as_str()), ("ping", "Attached")),
            other => panic!("expected an unexpected answer, got {other:?}"),
        }
        client.ping().unwrap();
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn another_protocol_version_is_a_mismatch_not_decoded() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, mut stream| {
            read_frame::<Request>(&mut stream).unwrap();
            // What an agent of another version answers: an error in its own version.
            let body = br#"{"result":"error","kind":"version_mismatch","message":"speak 2"}"#;
            let mut bytes = FrameHeader { version: PROTOCOL_VERSION + 1, len: body.len() as u32 }.encode().to_vec();
            bytes.extend_from_slice(body);
            stream.write_all(&bytes).unwrap();
        });
        match AgentClient::new(dir.socket()).delete("web", false) {
            Err(ClientError::Frame { op: "delete", source: FrameError::VersionMismatch { peer, ours } }) => {
                assert_eq!((peer, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
            }
            other => panic!("expected a version mismatch, got {other:?}"),
        }
        fake.join().unwrap();
    }

    #[test]
    fn attach_hands_over_the_raw_stream() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, mut stream| {
            let request = read_frame::<Request>(&mut stream).unwrap();
            assert_eq!(
                request,
                Request::AttachStdio {
                    container_id: "web".into(),
                    exec_id: Some("e1".into()),
                    stream: StdioStream::Pty
                }
            );
            // Output right behind the answer, in the same write.
            let mut bytes = frame(&Response::Attached);
            bytes.extend_from_slice(b"$ ");
            stream.write_all(&bytes).unwrap();
            let mut input = Vec::new();
            stream.read_to_end(&mut input).unwrap();
            stream.write_all(&input.to_ascii_uppercase()).unwrap();
        });
        let client = AgentClient::new(dir.socket());
        let mut pty = client.attach("web", Some("e1"), StdioStream::Pty).unwrap();
        assert_eq!(pty.read_timeout().unwrap(), None);
        let mut prompt = [0; 2];
        pty.read_exact(&mut prompt).unwrap();
        assert_eq!(&prompt, b"$ ");
        pty.write_all(b"echo hi\n").unwrap();
        pty.shutdown(std::net::Shutdown::Write).unwrap();
        let mut output = Vec::new();
        pty.read_to_end(&mut output).unwrap();
        assert_eq!(output, b"ECHO HI\n");
        fake.join().unwrap();
    }

    #[test]
    fn a_refused_attach_is_an_agent_error() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 1, |_, stream| {
            serve(stream, |_| {
                Some(Response::Error(AgentError { kind: ErrorKind::InvalidState, message: "attached".into() }))
            })
        });
        let err = AgentClient::new(dir.socket()).attach("web", None, StdioStream::Stdout).unwrap_err();
        assert!(
            matches!(err, ClientError::Agent { op: "attach_stdio", ref source } if source.kind == ErrorKind::InvalidState)
        );
        fake.join().unwrap();
    }

    #[test]
    fn a_dropped_control_connection_is_reopened() {
        let dir = TempDir::new();
        let (dropped, first_gone) = mpsc::channel();
        let fake = fake_agent(&dir.socket(), 2, move |index, stream| {
            if index == 0 {
                let mut stream = stream;
                let request = read_frame(&mut stream).unwrap();
                write_frame(&mut stream, &pong_to_pings(request)).unwrap();
                drop(stream);
                dropped.send(()).unwrap();
            } else {
                serve(stream, pong_to_pings);
            }
        });
        let client = AgentClient::new(dir.socket());
        client.ping().unwrap();
        first_gone.recv().unwrap();
        client.ping().unwrap();
        // Reused from here on: the fake accepts no third connection.
        client.ping().unwrap();
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn a_silent_agent_times_out_and_its_connection_is_dropped() {
        let dir = TempDir::new();
        let fake = fake_agent(&dir.socket(), 2, |index, mut stream| {
            if index == 0 {
                read_frame::<Request>(&mut stream).unwrap();
                // No answer; the client gives up and closes.
                assert!(matches!(read_frame::<Request>(&mut stream), Err(FrameError::Closed)));
            } else {
                serve(stream, pong_to_pings);
            }
        });
        let mut client = AgentClient::new(dir.socket());
        client.set_request_timeout(Duration::from_millis(100));
        match client.ping() {
            Err(ClientError::Frame { op: "ping", source: FrameError::Io(err) }) => {
                assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        client.ping().unwrap();
        drop(client);
        fake.join().unwrap();
    }

    #[test]
    fn shutdown_tolerates_the_connection_closing() {
        let dir = TempDir::new();
        let (order, next) = mpsc::channel();
        let next = Mutex::new(next);
        let fake = fake_agent(&dir.socket(), 3, move |_, mut stream| {
            // Connections are accepted in order, but their handlers race:
            // take the behaviours in the order the client asks for them.
            let request = read_frame::<Request>(&mut stream).unwrap();
            match next.lock().unwrap().recv().unwrap() {
                0 => assert_eq!(request, Request::Shutdown),
                1 => {
                    assert_eq!(request, Request::Shutdown);
                    write_frame(&mut stream, &Response::Done).unwrap();
                }
                _ => assert_eq!(request, Request::Start { container_id: "web".into() }),
            }
        });
        let client = AgentClient::new(dir.socket());
        // Closed without an answer: the VM went down first.
        order.send(0).unwrap();
        client.shutdown().unwrap();
        // Answered, on a new connection: shutdown never keeps one.
        order.send(1).unwrap();
        client.shutdown().unwrap();
        // Any other request cut off is an error.
        order.send(2).unwrap();
        match client.start("web") {
            Err(ClientError::Frame { op: "start", source: FrameError::Closed }) => {}
            other => panic!("expected a closed connection, got {other:?}"),
        }
        fake.join().unwrap();
    }
}
