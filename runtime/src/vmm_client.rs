//! A blocking client of husk-vmm's HTTP API (Firecracker's API, see
//! `api/openapi.yaml`) on its Unix socket.
//!
//! The runtime configures a VM with a handful of requests and then rarely
//! talks to the VMM again, so the client is deliberately plain: one
//! connection per request with `Connection: close`, a `Content-Length`
//! body, std I/O with a deadline, and no HTTP library. The server
//! (vmm/src/api_server.rs) answers with `Content-Length` bodies, or none
//! for 204; it never sends a chunked body, so one is reported as malformed
//! rather than decoded.
//!
//! A request writes to a socket whose peer may be gone: like every Rust
//! program by default, the process must ignore `SIGPIPE` so that this is
//! an error rather than its death.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use husk_api::devices::{validate_id, FsConfig, IdError, NetworkInterfaceConfig, VsockConfig};
use husk_api::vmm::{
    ActionType, ApiError, BootSourceConfig, InstanceActionInfo, InstanceInfo, MachineConfig, Vm, VmState,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long one request may take, connection to last byte of the answer.
/// The VMM answers configuration requests in microseconds; `InstanceStart`
/// loads the kernel and initramfs first, which in an emulated (TCG) test
/// host takes seconds. This only catches a hung VMM.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between two connection attempts of [`VmmClient::wait_for_socket`]:
/// short, because the VMM's start is on the path of every container start.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Socket timeouts of zero mean "none" to the kernel and are refused by
/// std, so shorter ones are rounded up to this.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Largest status line plus headers accepted: the server sends four short
/// headers, so anything near this is not its answer.
const MAX_HEAD_SIZE: usize = 16 * 1024;

/// Largest body accepted. The biggest answer, `GET /vm/config`, is a few
/// KiB; the bound keeps a confused peer from making the client buffer
/// without end.
const MAX_BODY_SIZE: usize = 1024 * 1024;

/// Why a request to the VMM's API failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmApiError {
    /// The API socket could not be connected to: no VMM listens there (any
    /// more).
    #[error("VMM API {method} {path}: cannot connect to {}: {source}", socket.display())]
    Connect { socket: PathBuf, method: &'static str, path: String, source: io::Error },
    /// Sending the request or reading the answer failed, or the VMM closed
    /// the connection before the end of its answer.
    #[error("VMM API {method} {path}: {source}")]
    Io { method: &'static str, path: String, source: io::Error },
    /// The VMM did not answer within the client's timeout.
    #[error("VMM API {method} {path}: no complete answer within {timeout:?}")]
    Timeout { method: &'static str, path: String, timeout: Duration },
    /// The VMM answered with a status other than 2xx.
    #[error("VMM API {method} {path} answered {status}: {}", fault_message.as_deref().unwrap_or("(no fault message)"))]
    Status { method: &'static str, path: String, status: u16, fault_message: Option<String> },
    /// The answer is not an HTTP response of the kind the VMM sends, or its
    /// body is not the JSON the request expects.
    #[error("VMM API {method} {path}: malformed answer: {reason}")]
    Malformed { method: &'static str, path: String, reason: String },
    /// The request body could not be serialized (the API's types serialize
    /// infallibly; kept rather than a panic).
    #[error("VMM API {method} {path}: cannot serialize the request body: {source}")]
    Serialize { method: &'static str, path: String, source: serde_json::Error },
    /// A device id that cannot be put in a request path: the VMM would
    /// refuse it, and spaces or line breaks would break the request line.
    #[error("VMM API {method}: device id {id:?} is invalid: {source}")]
    InvalidId { method: &'static str, id: String, source: IdError },
    /// [`VmmClient::wait_for_socket`] gave up: nothing accepted connections
    /// on the socket within the time allowed.
    #[error("the VMM API socket {} accepted no connection within {waited:?}; last attempt: {last}", socket.display())]
    SocketTimeout { socket: PathBuf, waited: Duration, last: io::Error },
    /// The VMM process ended while [`VmmClient::wait_for_socket`] waited
    /// for its socket.
    #[error("the VMM exited ({}) before its API socket {} accepted a connection",
        status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string()), socket.display())]
    VmmExited { socket: PathBuf, status: Option<ExitStatus> },
}

/// A client of one VMM's API socket.
#[derive(Clone, Debug)]
pub struct VmmClient {
    socket: PathBuf,
    timeout: Duration,
}

impl VmmClient {
    /// A client of the API at `socket`, with [`DEFAULT_TIMEOUT`]. Connects
    /// anew for every request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// Waits for a VMM that was just started to accept connections on
    /// `socket`: tries to connect every few milliseconds until it succeeds
    /// or `timeout` has passed. `alive` is asked before every attempt and
    /// ends the wait with [`VmmApiError::VmmExited`] when it returns false,
    /// so that a VMM that failed at start-up is reported at once rather
    /// than after the whole timeout.
    pub fn wait_for_socket(
        socket: impl Into<PathBuf>,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Self, VmmApiError> {
        let socket = socket.into();
        poll_socket(socket, timeout, |socket| {
            (!alive()).then(|| VmmApiError::VmmExited { socket: socket.to_path_buf(), status: None })
        })
    }

    /// [`VmmClient::wait_for_socket`] for a VMM that is `child`: stops
    /// waiting when it has exited, and reports its exit status (husk-vmm's
    /// statuses are in `husk_api::vmm_exit`). The child is reaped then.
    pub fn wait_for_vmm(socket: impl Into<PathBuf>, timeout: Duration, child: &mut Child) -> Result<Self, VmmApiError> {
        poll_socket(socket.into(), timeout, |socket| {
            let status = match child.try_wait() {
                Ok(None) => return None,
                Ok(Some(status)) => Some(status),
                // The child cannot be asked (it was reaped elsewhere):
                // waiting for its socket could only time out.
                Err(_) => None,
            };
            Some(VmmApiError::VmmExited { socket: socket.to_path_buf(), status })
        })
    }

    /// The same client with another per-request timeout (at least 1 ms).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout: timeout.max(MIN_TIMEOUT), ..self }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// How long one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&self, config: &BootSourceConfig) -> Result<(), VmmApiError> {
        self.put("/boot-source", config)
    }

    /// `PUT /machine-config`.
    pub fn put_machine_config(&self, config: &MachineConfig) -> Result<(), VmmApiError> {
        self.put("/machine-config", config)
    }

    /// `GET /machine-config`.
    pub fn machine_config(&self) -> Result<MachineConfig, VmmApiError> {
        self.get("/machine-config")
    }

    /// `PUT /vsock`.
    pub fn put_vsock(&self, config: &VsockConfig) -> Result<(), VmmApiError> {
        self.put("/vsock", config)
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub fn put_network_interface(&self, config: &NetworkInterfaceConfig) -> Result<(), VmmApiError> {
        let path = id_path("/network-interfaces", &config.iface_id, "PUT")?;
        self.put(&path, config)
    }

    /// `PUT /fs/{fs_id}` (husk's extension).
    pub fn put_fs(&self, config: &FsConfig) -> Result<(), VmmApiError> {
        let path = id_path("/fs", &config.fs_id, "PUT")?;
        self.put(&path, config)
    }

    /// `PUT /actions` InstanceStart: boots the configured VM.
    pub fn instance_start(&self) -> Result<(), VmmApiError> {
        self.action(ActionType::InstanceStart)
    }

    /// `PUT /actions` SendCtrlAltDel: asks the guest to shut down (the
    /// agent powers the VM off on it).
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmApiError> {
        self.action(ActionType::SendCtrlAltDel)
    }

    /// `PATCH /vm` Paused: stops the vCPUs.
    pub fn pause(&self) -> Result<(), VmmApiError> {
        self.send("PATCH", "/vm", &Vm { state: VmState::Paused }).map(drop)
    }

    /// `PATCH /vm` Resumed: lets paused vCPUs run again.
    pub fn resume(&self) -> Result<(), VmmApiError> {
        self.send("PATCH", "/vm", &Vm { state: VmState::Resumed }).map(drop)
    }

    /// `GET /`.
    pub fn instance_info(&self) -> Result<InstanceInfo, VmmApiError> {
        self.get("/")
    }

    fn action(&self, action_type: ActionType) -> Result<(), VmmApiError> {
        self.put("/actions", &InstanceActionInfo { action_type })
    }

    fn put<T: Serialize>(&self, path: &str, body: &T) -> Result<(), VmmApiError> {
        self.send("PUT", path, body).map(drop)
    }

    fn send<T: Serialize>(&self, method: &'static str, path: &str, body: &T) -> Result<Vec<u8>, VmmApiError> {
        let body = serde_json::to_vec(body).map_err(|source| VmmApiError::Serialize {
            method,
            path: path.to_owned(),
            source,
        })?;
        self.request(method, path, Some(&body))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, VmmApiError> {
        let body = self.request("GET", path, None)?;
        serde_json::from_slice(&body).map_err(|e| VmmApiError::Malformed {
            method: "GET",
            path: path.to_owned(),
            reason: format!("the body is not the expected JSON ({e}): {}", excerpt(&body)),
        })
    }

    /// Sends one request on a connection of its own and returns the body of
    /// a 2xx answer.
    fn request(&self, method: &'static str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, VmmApiError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| VmmApiError::Connect {
            socket: self.socket.clone(),
            method,
            path: path.to_owned(),
            source,
        })?;
        let response = exchange(&mut stream, &encode_request(method, path, body), deadline).map_err(|failure| {
            let path = path.to_owned();
            match failure {
                Failure::Io(source) => VmmApiError::Io { method, path, source },
                Failure::Timeout => VmmApiError::Timeout { method, path, timeout: self.timeout },
                Failure::Malformed(reason) => VmmApiError::Malformed { method, path, reason },
            }
        })?;
        if (200..300).contains(&response.status) {
            return Ok(response.body);
        }
        let fault_message = serde_json::from_slice::<ApiError>(&response.body).ok().map(|e| e.fault_message);
        Err(VmmApiError::Status { method, path: path.to_owned(), status: response.status, fault_message })
    }
}

/// The connection loop of the `wait_for_*` functions; `gone` says whether
/// the VMM has ended, as the error to return.
fn poll_socket(
    socket: PathBuf,
    timeout: Duration,
    mut gone: impl FnMut(&Path) -> Option<VmmApiError>,
) -> Result<VmmClient, VmmApiError> {
    let started = Instant::now();
    loop {
        if let Some(error) = gone(&socket) {
            return Err(error);
        }
        // A socket file left by a VMM that was killed refuses connections
        // until the new VMM replaces it, so only a connection proves that
        // this VMM listens. It is dropped at once: the server reads end of
        // stream and closes its side.
        let last = match UnixStream::connect(&socket) {
            Ok(_) => return Ok(VmmClient::new(socket)),
            Err(e) => e,
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(VmmApiError::SocketTimeout { socket, waited, last });
        }
        thread::sleep(POLL_INTERVAL.min(timeout - waited));
    }
}

/// `/prefix/id`, with the id checked by the rule the VMM applies to it.
fn id_path(prefix: &str, id: &str, method: &'static str) -> Result<String, VmmApiError> {
    validate_id(id).map_err(|source| VmmApiError::InvalidId { method, id: id.to_owned(), source })?;
    Ok(format!("{prefix}/{id}"))
}

fn encode_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Why an exchange failed, before the request's method and path are added.
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Timeout,
    Malformed(String),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        // A socket timeout surfaces as EAGAIN (WouldBlock) on Linux.
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Io(error),
        }
    }
}

/// A final (non-1xx) response.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Writes the request and reads the answer, all before `deadline`.
fn exchange(stream: &mut UnixStream, request: &[u8], deadline: Instant) -> Result<Response, Failure> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    if let Err(error) = stream.write_all(request) {
        // The server may refuse a request and close before reading all of
        // it (a body over its size limit): its answer says more than the
        // broken pipe, so read it if there is one.
        if !matches!(error.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
            return Err(error.into());
        }
        return read_response(stream, deadline).map_err(|_| Failure::from(error));
    }
    read_response(stream, deadline)
}

fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left.max(MIN_TIMEOUT)),
        _ => Err(Failure::Timeout),
    }
}

/// Appends what the server sent next to `buf`; 0 at end of stream.
fn fill(stream: &mut UnixStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, Failure> {
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn closed_early(received: usize, what: &str) -> Failure {
    Failure::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the VMM closed the connection {what} ({received} bytes received)"),
    ))
}

/// Reads one response, skipping interim (1xx) ones.
fn read_response(stream: &mut UnixStream, deadline: Instant) -> Result<Response, Failure> {
    let mut buf = Vec::new();
    loop {
        let head_len = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD_SIZE {
                return Err(Failure::Malformed(format!(
                    "no end of the response head within {MAX_HEAD_SIZE} bytes: {}",
                    excerpt(&buf)
                )));
            }
            if fill(stream, &mut buf, deadline)? == 0 {
                if buf.is_empty() {
                    return Err(closed_early(0, "without answering"));
                }
                // A peer that is not an HTTP server may say something and
                // close: what it said is more telling than the early close.
                if !buf.starts_with(b"HTTP/") {
                    return Err(Failure::Malformed(format!("not an HTTP response: {}", excerpt(&buf))));
                }
                return Err(closed_early(buf.len(), "in the middle of the response head"));
            }
        };
        let head = parse_head(&buf[..head_len])?;
        buf.drain(..head_len);
        if (100..200).contains(&head.status) {
            continue;
        }
        // RFC 9112 6.3: these never have a body, whatever the headers say.
        if head.status == 204 || head.status == 304 {
            return Ok(Response { status: head.status, body: Vec::new() });
        }
        let body = match head.content_length {
            Some(length) => {
                if length > MAX_BODY_SIZE {
                    return Err(Failure::Malformed(format!(
                        "a body of {length} bytes is larger than the {MAX_BODY_SIZE} accepted"
                    )));
                }
                while buf.len() < length {
                    if fill(stream, &mut buf, deadline)? == 0 {
                        return Err(closed_early(buf.len(), &format!("before the end of a {length}-byte body")));
                    }
                }
                buf.truncate(length);
                buf
            }
            // Without a length the body ends with the connection, which
            // `Connection: close` asked the server to close.
            None => {
                while fill(stream, &mut buf, deadline)? > 0 {
                    if buf.len() > MAX_BODY_SIZE {
                        return Err(Failure::Malformed(format!("a body larger than the {MAX_BODY_SIZE} accepted")));
                    }
                }
                buf
            }
        };
        return Ok(Response { status: head.status, body });
    }
}

/// What the client needs of a response head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
}

/// Parses a status line and headers, the blank line included.
fn parse_head(bytes: &[u8]) -> Result<Head, Failure> {
    let malformed = |what: &str| Failure::Malformed(format!("{what}: {}", excerpt(bytes)));
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("the response head is not UTF-8"))?;
    let mut lines = text.strip_suffix("\r\n\r\n").unwrap_or(text).split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed("not an HTTP/1.x response"));
    }
    let status = match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..600).contains(&status) => status,
        _ => return Err(malformed("invalid status code")),
    };
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| malformed("a header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(malformed("two different Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            // husk-vmm's server never encodes a body: a transfer encoding
            // means the peer is something else.
            return Err(malformed("unsupported Transfer-Encoding"));
        }
    }
    Ok(Head { status, content_length })
}

/// The start of what the peer sent, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX {
        format!("{text:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    use husk_api::vmm::{InstanceState, MAX_VCPU_COUNT};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    fn temp_dir() -> TempDir {
        TempDir::new_with_prefix("/tmp/husk-vmm-client-test-").expect("creating a temporary directory")
    }

    /// Reads one request as the client sends it: head, then a body of its
    /// Content-Length.
    fn read_request(stream: &mut UnixStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                if buf.len() >= end + 4 + length {
                    return String::from_utf8(buf).unwrap();
                }
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the client closed in the middle of its request: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A fake API server answering each connection with the next of
    /// `answers` (and closing), and reporting the requests it read.
    struct FakeServer {
        _dir: TempDir,
        socket: PathBuf,
        requests: mpsc::Receiver<String>,
    }

    impl FakeServer {
        fn start(answers: Vec<Vec<u8>>) -> Self {
            let dir = temp_dir();
            let socket = dir.as_path().join("api.sock");
            let listener = UnixListener::bind(&socket).unwrap();
            let (seen, requests) = mpsc::channel();
            thread::spawn(move || {
                for answer in answers {
                    let (mut stream, _) = listener.accept().unwrap();
                    let _ = seen.send(read_request(&mut stream));
                    stream.write_all(&answer).unwrap();
                }
            });
            Self { _dir: dir, socket, requests }
        }

        fn client(&self) -> VmmClient {
            VmmClient::new(&self.socket).with_timeout(Duration::from_secs(10))
        }
    }

    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nServer: husk\r\nConnection: close\r\n\r\n";

    /// An answer as husk-vmm's server encodes one with a JSON body.
    fn json_answer(status_line: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status_line}\r\nServer: husk\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn puts_send_the_json_body_and_accept_204() {
        let server = FakeServer::start(vec![NO_CONTENT.to_vec(); 4]);
        let client = server.client();

        let config = MachineConfig { vcpu_count: 2, mem_size_mib: 256, ..MachineConfig::default() };
        client.put_machine_config(&config).unwrap();
        let request = server.requests.recv().unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("PUT /machine-config HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"Connection: close"), "{headers:?}");
        assert!(headers.contains(&"Content-Type: application/json"), "{headers:?}");
        assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()), "{headers:?}");
        assert_eq!(serde_json::from_str::<MachineConfig>(body).unwrap(), config);

        let fs = FsConfig {
            fs_id: "rootfs".into(),
            tag: "rootfs".into(),
            shared_dir: "/srv/rootfs".into(),
            read_only: false,
            cache: Default::default(),
            dax_window_mib: None,
            allow_host_root: false,
            root_uid: 65534,
            root_gid: 65534,
        };
        client.put_fs(&fs).unwrap();
        let request = server.requests.recv().unwrap();
        assert!(request.starts_with("PUT /fs/rootfs HTTP/1.1\r\n"), "{request}");
        let body = request.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(serde_json::from_str::<FsConfig>(body).unwrap(), fs);

        client.pause().unwrap();
        let request = server.requests.recv().unwrap();
        assert!(request.starts_with("PATCH /vm HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"state\":\"Paused\"}"), "{request}");

        client.send_ctrl_alt_del().unwrap();
        let request = server.requests.recv().unwrap();
        assert!(request.starts_with("PUT /actions HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"action_type\":\"SendCtrlAltDel\"}"), "{request}");
    }

    #[test]
    fn gets_parse_the_json_body() {
        let server = FakeServer::start(vec![
            json_answer("200 OK", r#"{"app_name":"husk","id":"c1","state":"Not started","vmm_version":"0.1.0"}"#),
            // An interim answer first, and a body that ends with the
            // connection rather than a Content-Length.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\n\
              {\"app_name\":\"husk\",\"id\":\"c2\",\"state\":\"Running\",\"vmm_version\":\"0.1.0\"}"
                .to_vec(),
            json_answer("200 OK", "{}"),
        ]);
        let client = server.client();

        let info = client.instance_info().unwrap();
        let expected = InstanceInfo {
            app_name: "husk".into(),
            id: "c1".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
        };
        assert_eq!(info, expected);
        let request = server.requests.recv().unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
        assert!(!request.contains("Content-Length"), "a GET has no body: {request}");

        assert_eq!(client.instance_info().unwrap().state, InstanceState::Running);

        let error = client.instance_info().unwrap_err();
        assert!(matches!(&error, VmmApiError::Malformed { method: "GET", path, .. } if path == "/"), "{error:?}");
        assert!(error.to_string().contains("missing field"), "{error}");
    }

    #[test]
    fn error_statuses_carry_the_fault_message() {
        let server = FakeServer::start(vec![
            json_answer("400 Bad Request", r#"{"fault_message":"vcpu_count must be between 1 and 32, got 33"}"#),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\noops!".to_vec(),
        ]);
        let client = server.client();
        let config = MachineConfig { vcpu_count: 33, ..MachineConfig::default() };
        let error = client.put_machine_config(&config).unwrap_err();
        match &error {
            VmmApiError::Status { method, path, status, fault_message } => {
                assert_eq!((*method, path.as_str(), *status), ("PUT", "/machine-config", 400));
                assert_eq!(fault_message.as_deref(), Some("vcpu_count must be between 1 and 32, got 33"));
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        assert_eq!(
            error.to_string(),
            "VMM API PUT /machine-config answered 400: vcpu_count must be between 1 and 32, got 33"
        );

        let error = client.resume().unwrap_err();
        assert!(
            matches!(&error, VmmApiError::Status { status: 503, fault_message: None, method: "PATCH", .. }),
            "{error:?}"
        );
        assert!(error.to_string().ends_with("answered 503: (no fault message)"), "{error}");
    }

    #[test]
    fn garbage_answers_are_malformed() {
        let server = FakeServer::start(
            [
                &b"SSH-2.0-OpenSSH_9.2p1\r\n"[..],
                b"HTTP/1.1 2000 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            ]
            .map(<[u8]>::to_vec)
            .to_vec(),
        );
        let client = server.client();
        for expected in [
            "not an HTTP response: \"SSH-2.0",
            "invalid status code",
            "a header line without a colon",
            "unsupported Transfer-Encoding",
            "two different Content-Length headers",
        ] {
            let error = client.instance_info().unwrap_err();
            assert!(matches!(error, VmmApiError::Malformed { .. }), "{error:?}");
            assert!(error.to_string().contains(expected), "expected {expected:?} in: {error}");
        }
    }

    #[test]
    fn a_server_closing_early_is_an_io_error() {
        let server = FakeServer::start(
            [&b""[..], b"HTTP/1.1 200 OK\r\nContent-", b"HTTP/1.1 200 OK\r\nContent-Length: 75\r\n\r\n{\"app_name\":"]
                .map(<[u8]>::to_vec)
                .to_vec(),
        );
        let client = server.client();
        for expected in ["without answering", "in the middle of the response head", "before the end of a 75-byte body"]
        {
            let error = client.instance_info().unwrap_err();
            match &error {
                VmmApiError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("expected an I/O error, got {other:?}"),
            }
            assert!(error.to_string().contains(expected), "expected {expected:?} in: {error}");
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = temp_dir();
        let socket = dir.as_path().join("api.sock");
        // Accepts (the backlog does) but never answers.
        let _listener = UnixListener::bind(&socket).unwrap();
        let client = VmmClient::new(&socket).with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let error = client.instance_start().unwrap_err();
        assert!(matches!(&error, VmmApiError::Timeout { method: "PUT", path, .. } if path == "/actions"), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn no_server_is_a_connect_error_and_bad_ids_are_refused_before_connecting() {
        let dir = temp_dir();
        let client = VmmClient::new(dir.as_path().join("absent.sock"));
        let error = client.instance_info().unwrap_err();
        assert!(matches!(&error, VmmApiError::Connect { method: "GET", .. }), "{error:?}");
        assert!(error.to_string().contains("absent.sock"), "{error}");

        let net = NetworkInterfaceConfig {
            iface_id: "eth0 HTTP/1.1\r\nX: y".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        let error = client.put_network_interface(&net).unwrap_err();
        assert!(matches!(&error, VmmApiError::InvalidId { source: IdError::InvalidCharacter, .. }), "{error:?}");
    }

    #[test]
    fn wait_for_socket_waits_for_the_listener_and_stops_when_the_vmm_is_gone() {
        let dir = temp_dir();
        let socket = dir.as_path().join("api.sock");
        // A stale socket file: refuses connections until replaced.
        drop(UnixListener::bind(&socket).unwrap());
        let late = socket.clone();
        let binder = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            std::fs::remove_file(&late).unwrap();
            UnixListener::bind(&late).unwrap()
        });
        let started = Instant::now();
        let client = VmmClient::wait_for_socket(&socket, Duration::from_secs(10), || true).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100), "connected to the stale socket");
        assert_eq!(client.socket(), socket);
        let _listener = binder.join().unwrap();

        let absent = dir.as_path().join("absent.sock");
        let error = VmmClient::wait_for_socket(&absent, Duration::from_millis(50), || true).unwrap_err();
        match &error {
            VmmApiError::SocketTimeout { waited, last, .. } => {
                assert!(*waited >= Duration::from_millis(50));
                assert_eq!(last.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }

        let mut checks = 0;
        let error = VmmClient::wait_for_socket(&absent, Duration::from_secs(10), || {
            checks += 1;
            checks < 3
        })
        .unwrap_err();
        assert!(matches!(error, VmmApiError::VmmExited { status: None, .. }), "{error:?}");
        assert_eq!(checks, 3);

        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let error = VmmClient::wait_for_vmm(&absent, Duration::from_secs(10), &mut child).unwrap_err();
        match &error {
            VmmApiError::VmmExited { status: Some(status), .. } => assert_eq!(status.code(), Some(7)),
            other => panic!("expected the exit status, got {other:?}"),
        }
        assert!(error.to_string().contains("exit status: 7"), "{error}");
    }

    /// The husk-vmm binary: `HUSK_VMM_BIN`, else the one built beside this
    /// test executable (target/<profile>/deps/.. holds the workspace's
    /// binaries; `cargo test --workspace` builds them first).
    fn husk_vmm_binary() -> PathBuf {
        if let Some(path) = std::env::var_os("HUSK_VMM_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("the test executable is in target/<profile>/deps");
        profile_dir.join("husk-vmm")
    }

    /// Kills and reaps the VMM however the test ends.
    struct Vmm(Child);

    impl Drop for Vmm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn configures_the_real_vmm() {
        let binary = husk_vmm_binary();
        assert!(
            binary.is_file(),
            "{} is missing: build husk-vmm first (`cargo build -p husk-vmm`, or set HUSK_VMM_BIN)",
            binary.display()
        );
        let dir = temp_dir();
        let socket = dir.as_path().join("api.sock");
        let child = Command::new(&binary)
            .arg("--api-sock")
            .arg(&socket)
            .args(["--id", "runtime-client-test", "--serial-out", "off", "--level", "Error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut vmm = Vmm(child);
        let client = VmmClient::wait_for_vmm(&socket, Duration::from_secs(30), &mut vmm.0).unwrap();

        let info = client.instance_info().unwrap();
        assert_eq!((info.app_name.as_str(), info.id.as_str()), ("husk", "runtime-client-test"));
        assert_eq!(info.state, InstanceState::NotStarted);

        let config = MachineConfig { vcpu_count: 2, mem_size_mib: 256, ..MachineConfig::default() };
        client.put_machine_config(&config).unwrap();
        assert_eq!(client.machine_config().unwrap(), config);

        let too_many = MachineConfig { vcpu_count: MAX_VCPU_COUNT + 1, ..config.clone() };
        let error = client.put_machine_config(&too_many).unwrap_err();
        match error {
            VmmApiError::Status { status: 400, fault_message: Some(message), .. } => {
                assert!(message.contains("vcpu_count must be between 1 and"), "{message}")
            }
            other => panic!("expected a 400 with a fault message, got {other:?}"),
        }
        assert_eq!(client.machine_config().unwrap(), config, "a refused PUT changes nothing");
    }
}
