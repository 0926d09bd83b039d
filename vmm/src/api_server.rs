//! The HTTP API server: Firecracker's API on a Unix socket.
//!
//! Paths, methods, JSON bodies, status codes and fault messages are
//! Firecracker's (see `api/openapi.yaml`), so Firecracker's SDKs and tools
//! drive husk unchanged.
//!
//! The server is deliberately small: HTTP/1.1 parsed with `httparse`, blocking
//! I/O, one thread per connection (at most [`MAX_CONNECTIONS`]), no async
//! runtime and no thread pool, which keeps the VMM's start-up time and
//! resident memory down. The API carries a handful of small requests while a
//! VM is configured, so throughput is not a concern.
//!
//! Requests reach the VMM one at a time: a connection thread sends its
//! [`VmmAction`], wakes the VMM through an eventfd and waits for the
//! [`VmmResponse`] while holding the lock on the channels, so answers can
//! never be matched to the wrong request and the VMM never sees two
//! concurrent requests, whatever the number of connections.
//!
//! Supported HTTP: request bodies delimited by `Content-Length` (at most
//! [`MAX_PAYLOAD_SIZE`] bytes, Firecracker's default limit), `Expect:
//! 100-continue`, keep-alive (the default in HTTP/1.1) and `Connection:
//! close`. A chunked body is refused: like Firecracker, the API only takes
//! `Content-Length` bodies. Errors the HTTP layer detects are answered with
//! 400 and a `fault_message`, and the connection is closed, because the
//! stream can no longer be trusted to be at the start of a request.
//!
//! Writing to a client that went away raises `SIGPIPE`, which the Rust
//! runtime ignores in every Rust `main`, so the write fails with `EPIPE` and
//! only that connection's thread ends.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use husk_api::devices::{validate_id, FsConfig, IdError, NetworkInterfaceConfig, VsockConfig};
use husk_api::vmm::{
    ActionType, ApiError, BootSourceConfig, InstanceActionInfo, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, Vm,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, error, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::rpc::{VmmAction, VmmData, VmmResponse};
use crate::seccomp::{SeccompFilters, ThreadKind};

/// Largest accepted request body: Firecracker's default API payload limit.
pub const MAX_PAYLOAD_SIZE: usize = 51_200;

/// Largest accepted request line plus headers. API requests carry a few
/// short headers; the limit keeps a client from making the server buffer an
/// endless header section.
pub const MAX_HEAD_SIZE: usize = 16 * 1024;

/// Most headers one request may have (httparse parses into a fixed array).
const MAX_HEADERS: usize = 32;

/// Largest oversized body read (and dropped) before answering 400; see
/// [`Connection::read_request`].
const MAX_DISCARDED_PAYLOAD: usize = 1024 * 1024;

/// Most connections served at once, as Firecracker; further clients get 503.
pub const MAX_CONNECTIONS: usize = 10;

/// Every (method, path) the API implements. `api/openapi.yaml` documents
/// exactly these (checked by `vmm/tests/openapi.rs`). A path with a
/// `{parameter}` stands for every path with one id in its place.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("PUT", "/actions"),
    ("PUT", "/boot-source"),
    ("PUT", "/fs/{fs_id}"),
    ("PUT", "/logger"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/metrics"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
    ("PUT", "/vsock"),
];

/// The routes that end in an id, as (prefix, template): the request path
/// `<prefix>/<id>` routes as `template`.
const ID_ROUTES: &[(&str, &str)] = &[("/fs", "/fs/{fs_id}"), ("/network-interfaces", "/network-interfaces/{iface_id}")];

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot inspect the API socket path {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it with the API socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale API socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind the API socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the API server thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("API server thread: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A request the API refuses before it reaches the VMM: always a 400 whose
/// `fault_message` is the error's text, which is Firecracker's.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No route for this method and path.
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPathMethod { method: String, path: String },
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// A PUT without a body.
    #[error("Empty PUT request.")]
    EmptyPut,
    /// A PATCH without a body, or one that changes nothing (`{}`).
    #[error("Empty PATCH request.")]
    EmptyPatch,
    /// The body is not the JSON the route takes: malformed, an unknown
    /// field, a missing one, a value of the wrong type or an unknown variant.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(#[from] serde_json::Error),
    /// A JSON array where the API takes an object: serde's derived structs
    /// would read `[2, 256]` as `{"vcpu_count": 2, "mem_size_mib": 256}`,
    /// and no request body has an array anywhere.
    #[error(
        "An error occurred when deserializing the json body of a request: {0} is a JSON array, \
         and the API takes objects (and no arrays) in request bodies."
    )]
    Array(String),
    /// The id in the path is empty, too long or has characters other than
    /// alphanumerics and `_` (Firecracker's rule, which also keeps `/`,
    /// `%` and `.` out of it).
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// The id in the path is not the one in the body.
    #[error("The id from the path [{path}] does not match the id from the body [{body}]!")]
    IdMismatch { path: String, body: String },
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        ApiError::new(error.to_string())
    }
}

/// Turns a request into the [`VmmAction`] it asks for, or says why it is
/// refused. Pure: the whole routing and body parsing of the API, without I/O.
///
/// Whether the values are acceptable (a vCPU count of 0, a missing kernel) is
/// for the VMM to decide; only the shape of the body is checked here. As in
/// Firecracker, the body checks come before routing: a GET with a body and a
/// PUT or PATCH without one are refused whatever the path.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    match method {
        "GET" if !body.is_empty() => return Err(RequestError::GetWithBody),
        "PUT" if body.is_empty() => return Err(RequestError::EmptyPut),
        "PATCH" if body.is_empty() => return Err(RequestError::EmptyPatch),
        _ => {}
    }
    let (route, id) = split_id(route_path(path));
    let action = match (method, route) {
        ("GET", "/") => VmmAction::GetInstanceInfo,
        ("GET", "/machine-config") => VmmAction::GetMachineConfig,
        ("GET", "/vm/config") => VmmAction::GetVmConfig,
        ("PUT", "/actions") => match json::<InstanceActionInfo>(body)?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        ("PUT", "/boot-source") => VmmAction::PutBootSource(json::<BootSourceConfig>(body)?),
        ("PUT", "/logger") => VmmAction::PutLogger(json::<LoggerConfig>(body)?),
        ("PUT", "/machine-config") => VmmAction::PutMachineConfig(json::<MachineConfig>(body)?),
        ("PATCH", "/machine-config") => {
            let update = json::<MachineConfigUpdate>(body)?;
            // As Firecracker: an update that changes nothing is refused.
            if update.is_empty() {
                return Err(RequestError::EmptyPatch);
            }
            VmmAction::PatchMachineConfig(update)
        }
        ("PUT", "/metrics") => VmmAction::PutMetrics(json::<MetricsConfig>(body)?),
        ("PUT", "/vsock") => VmmAction::PutVsock(json::<VsockConfig>(body)?),
        ("PUT", "/network-interfaces/{iface_id}") => {
            let id = checked_id(id)?;
            let config = json::<NetworkInterfaceConfig>(body)?;
            same_id(id, &config.iface_id)?;
            VmmAction::PutNetworkInterface(config)
        }
        ("PUT", "/fs/{fs_id}") => {
            let id = checked_id(id)?;
            let config = json::<FsConfig>(body)?;
            same_id(id, &config.fs_id)?;
            VmmAction::PutFs(config)
        }
        ("PATCH", "/vm") => VmmAction::PatchVm(json::<Vm>(body)?.state),
        _ => return Err(RequestError::InvalidPathMethod { method: method.to_string(), path: path.to_string() }),
    };
    Ok(action)
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(at) = first_array(&value, "") {
        return Err(RequestError::Array(at));
    }
    // Parsed again from the bytes, so that errors give a line and column.
    Ok(serde_json::from_slice(body)?)
}

/// Where `value` has an array: "the body" or "field `a.b`".
fn first_array(value: &serde_json::Value, at: &str) -> Option<String> {
    match value {
        serde_json::Value::Array(_) if at.is_empty() => Some("the body".to_string()),
        serde_json::Value::Array(_) => Some(format!("field `{at}`")),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(name, value)| {
            let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
            first_array(value, &path)
        }),
        _ => None,
    }
}

/// Splits a path that ends in an id into its route template and the id:
/// `/fs/root` is (`/fs/{fs_id}`, `root`). The id is everything after the
/// prefix's slash, unchecked: `/fs/a/b` gives `a/b`, which [`checked_id`]
/// refuses. The bare prefix gives an empty id, refused as Firecracker
/// refuses `PUT /network-interfaces` ("The ID cannot be empty."). Other
/// paths are returned unchanged, without an id.
fn split_id(path: &str) -> (&str, &str) {
    for &(prefix, template) in ID_ROUTES {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() {
                return (template, "");
            }
            if let Some(id) = rest.strip_prefix('/') {
                return (template, id);
            }
        }
    }
    (path, "")
}

fn checked_id(id: &str) -> Result<&str, RequestError> {
    validate_id(id)?;
    Ok(id)
}

/// As Firecracker: the body names the device too, and must name the same one.
fn same_id(path: &str, body: &str) -> Result<(), RequestError> {
    if path != body {
        return Err(RequestError::IdMismatch { path: path.to_string(), body: body.to_string() });
    }
    Ok(())
}

/// The path a request target routes on. Clients may send the absolute form
/// (`http://localhost/vm`), which HTTP/1.1 servers must accept, and
/// Firecracker ignores a trailing slash (`/machine-config/`), so both are
/// reduced to the plain path.
fn route_path(target: &str) -> &str {
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |start| &rest[start..]),
        None => target,
    };
    match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => path,
    }
}

/// The API server: a bound socket, not yet serving.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiServer {
    /// Binds the API socket at `path`.
    ///
    /// A socket already there is taken to be left over from an earlier run
    /// (a VMM that was killed does not remove its socket) and replaced.
    /// Anything else at `path` is an error rather than deleted: a wrong
    /// `--api-sock` must not destroy a file.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ApiServerError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                std::fs::remove_file(&path)
                    .map_err(|source| ApiServerError::RemoveStale { path: path.clone(), source })?;
            }
            Ok(_) => return Err(ApiServerError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ApiServerError::Inspect { path, source }),
        }
        let listener =
            UnixListener::bind(&path).map_err(|source| ApiServerError::Bind { path: path.clone(), source })?;
        Ok(Self { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the API forever on the calling thread: accepts connections and
    /// serves each on its own thread. Every request is sent to the VMM on
    /// `to_vmm`, followed by a write to `wake_vmm`, and answered with the
    /// next response on `from_vmm`.
    pub fn serve(self, to_vmm: Sender<VmmAction>, wake_vmm: EventFd, from_vmm: Receiver<VmmResponse>) -> ! {
        let vmm = Arc::new(VmmChannel(Mutex::new(VmmEnds { to_vmm, wake_vmm, from_vmm })));
        let connections = Arc::new(AtomicUsize::new(0));
        info!("API server listening on {}", self.path.display());
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Running out of file descriptors is the usual cause and
                    // passes when connections close: wait a little rather
                    // than spin on the error.
                    warn!("API server cannot accept a connection: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(slot) = ConnectionSlot::take(&connections) else {
                warn!("API server refuses a connection: {MAX_CONNECTIONS} connections are open");
                refuse_busy(stream);
                continue;
            };
            let vmm = Arc::clone(&vmm);
            let spawned = thread::Builder::new().name("husk-api-conn".into()).spawn(move || {
                let _slot = slot;
                crate::seccomp::inherited(ThreadKind::Api);
                serve_connection(stream, &vmm);
            });
            if let Err(e) = spawned {
                // The closure, and with it the stream and the slot, is
                // dropped: the client sees the connection close.
                error!("API server cannot start a connection thread: {e}");
            }
        }
    }

    /// Runs [`ApiServer::serve`] on a new thread named `husk-api`, which
    /// first installs the API's seccomp filter (its connection threads
    /// inherit it); returns once it has.
    pub fn spawn(
        self,
        to_vmm: Sender<VmmAction>,
        wake_vmm: EventFd,
        from_vmm: Receiver<VmmResponse>,
        seccomp: Arc<SeccompFilters>,
    ) -> Result<JoinHandle<()>, ApiServerError> {
        let (filtered, installed) = std::sync::mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("husk-api".into())
            .spawn(move || {
                let result = seccomp.apply(ThreadKind::Api);
                let ok = result.is_ok();
                let _ = filtered.send(result);
                if ok {
                    self.serve(to_vmm, wake_vmm, from_vmm);
                }
            })
            .map_err(ApiServerError::Spawn)?;
        match installed.recv() {
            Ok(result) => result.map(|()| thread).map_err(ApiServerError::from),
            Err(_) => Err(ApiServerError::Spawn(io::Error::other("the API thread ended before it started"))),
        }
    }
}

/// A place among the [`MAX_CONNECTIONS`] connections; freed when dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < MAX_CONNECTIONS).then_some(open + 1))
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection over the limit with 503 and closes it.
fn refuse_busy(mut stream: UnixStream) {
    let response = Response::fault(503, "Too many open connections.".to_string());
    // A fresh socket's send buffer is empty, so this write does not block
    // the accept loop; a failure only means the client is already gone.
    let _ = stream.write_all(&response.encode(false));
}

/// The API's ends of the channels to the VMM.
struct VmmEnds {
    to_vmm: Sender<VmmAction>,
    wake_vmm: EventFd,
    from_vmm: Receiver<VmmResponse>,
}

/// The channels to the VMM, shared by the connection threads and used by one
/// request at a time.
struct VmmChannel(Mutex<VmmEnds>);

/// Why a request got no answer from the VMM: the VMM has stopped.
#[derive(Debug, thiserror::Error)]
enum VmmGone {
    #[error("The VMM is not running: the request was not carried out.")]
    BeforeSending,
    #[error("The VMM stopped before answering: the request may have been carried out.")]
    BeforeAnswering,
}

impl VmmChannel {
    /// Sends `action` to the VMM and waits for its answer.
    fn call(&self, action: VmmAction) -> Result<VmmResponse, VmmGone> {
        // Nothing panics while the lock is held, so a poisoned lock still
        // guards channels with no request in flight and can be used.
        let ends = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        ends.to_vmm.send(action).map_err(|_| VmmGone::BeforeSending)?;
        if let Err(e) = ends.wake_vmm.write(1) {
            // The action is queued: still wait for its answer, so that it
            // cannot be taken for the answer to the next request. The VMM
            // sees the action the next time it looks at the channel.
            error!("API server cannot wake the VMM: {e}");
        }
        ends.from_vmm.recv().map_err(|_| VmmGone::BeforeAnswering)
    }
}

/// Serves one connection until the client closes it, asks to, or sends
/// something that is not HTTP.
fn serve_connection(stream: UnixStream, vmm: &VmmChannel) {
    let mut connection = Connection { stream, buf: Vec::new() };
    loop {
        let request = match connection.read_request() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(ReadError::Io(e)) => {
                // The client went away, possibly in the middle of a request:
                // nothing to answer, and nothing reached the VMM.
                debug!("API connection ends: {e}");
                return;
            }
            Err(ReadError::Http(e)) => {
                warn!("API server refuses a request: {e}");
                let _ = connection.stream.write_all(&Response::fault(400, e.to_string()).encode(false));
                return;
            }
        };
        let response = handle(&request, vmm);
        if let Err(e) = connection.stream.write_all(&response.encode(request.keep_alive)) {
            debug!("API connection ends: cannot write the response: {e}");
            return;
        }
        if !request.keep_alive {
            return;
        }
    }
}

/// Answers one request: parse it, hand it to the VMM, turn the outcome into
/// a response.
fn handle(request: &Request, vmm: &VmmChannel) -> Response {
    let action = match parse_request(&request.method, &request.path, &request.body) {
        Ok(action) => action,
        Err(e) => {
            warn!("API request {} {} refused: {e}", request.method, request.path);
            return Response::fault(400, e.to_string());
        }
    };
    debug!("API request {} {}: {action:?}", request.method, request.path);
    match vmm.call(action) {
        Ok(Ok(VmmData::Empty)) => Response { status: 204, body: None },
        Ok(Ok(VmmData::InstanceInfo(info))) => Response::json(&info),
        Ok(Ok(VmmData::MachineConfig(config))) => Response::json(&config),
        Ok(Ok(VmmData::VmConfig(config))) => Response::json(&config),
        Ok(Err(e)) => {
            warn!("API request {} {} failed: {e}", request.method, request.path);
            Response::fault(400, e.0)
        }
        Err(e) => {
            error!("API request {} {}: {e}", request.method, request.path);
            Response::fault(500, e.to_string())
        }
    }
}

/// A request as the connection read it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    /// Whether the connection stays open after the response.
    keep_alive: bool,
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The stream failed or ended: nobody to answer.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The bytes are not a request the server takes: answer 400 and close.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Requests the HTTP layer refuses; the text is the `fault_message`.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("Invalid HTTP request: {0}.")]
    Malformed(httparse::Error),
    #[error("Request line and headers are larger than the limit of {MAX_HEAD_SIZE} bytes allowed by server.")]
    HeadTooLarge,
    // Firecracker's wording, for the same limit.
    #[error("Request payload with size {0} is larger than the limit of {MAX_PAYLOAD_SIZE} allowed by server.")]
    PayloadTooLarge(usize),
    #[error("Invalid Content-Length header: {0:?}.")]
    InvalidContentLength(String),
    #[error("Transfer-Encoding {0:?} is not supported: send the body with a Content-Length header.")]
    UnsupportedTransferEncoding(String),
}

/// The head of a request: what [`Connection::read_request`] keeps of it.
struct Head {
    /// Bytes of the request line and headers, up to and including the blank line.
    len: usize,
    method: String,
    path: String,
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
}

impl Head {
    fn parse(request: &httparse::Request<'_, '_>, len: usize) -> Result<Self, HttpError> {
        let mut content_length: Option<usize> = None;
        let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
        for header in request.headers.iter() {
            let value = String::from_utf8_lossy(header.value);
            let value = value.trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                let length = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| value.parse::<usize>().ok())
                    .flatten()
                    .ok_or_else(|| HttpError::InvalidContentLength(value.to_string()))?;
                // Two different lengths make the body's end ambiguous, the
                // ground of request smuggling: refuse (RFC 9110, 8.6).
                if content_length.is_some_and(|earlier| earlier != length) {
                    return Err(HttpError::InvalidContentLength(value.to_string()));
                }
                content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if !value.eq_ignore_ascii_case("identity") {
                    return Err(HttpError::UnsupportedTransferEncoding(value.to_string()));
                }
            } else if header.name.eq_ignore_ascii_case("connection") {
                for option in value.split(',').map(str::trim) {
                    close |= option.eq_ignore_ascii_case("close");
                    keep_alive |= option.eq_ignore_ascii_case("keep-alive");
                }
            } else if header.name.eq_ignore_ascii_case("expect") {
                expect_continue |= value.eq_ignore_ascii_case("100-continue");
            }
        }
        // HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0
        // closes them unless asked to keep them.
        let http11 = request.version == Some(1);
        Ok(Self {
            len,
            method: request.method.unwrap_or_default().to_string(),
            path: request.path.unwrap_or_default().to_string(),
            content_length: content_length.unwrap_or(0),
            keep_alive: !close && (http11 || keep_alive),
            expect_continue,
        })
    }
}

/// A client connection and the bytes read from it but not consumed yet
/// (the start of a pipelined request).
struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Reads the next request. `Ok(None)` when the client closed the
    /// connection between requests.
    fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&self.buf).map_err(HttpError::Malformed)? {
                httparse::Status::Complete(len) => break Head::parse(&request, len)?,
                httparse::Status::Partial if self.buf.len() >= MAX_HEAD_SIZE => {
                    return Err(HttpError::HeadTooLarge.into())
                }
                httparse::Status::Partial => {
                    if self.fill()? == 0 {
                        if self.buf.is_empty() {
                            return Ok(None);
                        }
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in a request's head").into());
                    }
                }
            }
        };
        if head.len > MAX_HEAD_SIZE {
            return Err(HttpError::HeadTooLarge.into());
        }
        if head.content_length > MAX_PAYLOAD_SIZE {
            // Most clients send the body without waiting for an answer. Read
            // and drop it before answering, so they read the 400 rather than
            // fail writing to a closed socket. A client that waits for `100
            // Continue` sends no body, and one declaring a body too large to
            // be worth reading is answered at once; either way the
            // connection is closed after the 400.
            if !head.expect_continue && head.content_length <= MAX_DISCARDED_PAYLOAD {
                self.discard(head.len + head.content_length)?;
            }
            return Err(HttpError::PayloadTooLarge(head.content_length).into());
        }
        self.buf.drain(..head.len);
        if head.expect_continue && self.buf.len() < head.content_length {
            // The client waits for this before sending the body (curl does
            // for large bodies).
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while self.buf.len() < head.content_length {
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in a request's body").into());
            }
        }
        let rest = self.buf.split_off(head.content_length);
        let body = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Request { method: head.method, path: head.path, body, keep_alive: head.keep_alive }))
    }

    /// Consumes `len` bytes of the stream, buffered ones first, without
    /// keeping them.
    fn discard(&mut self, len: usize) -> io::Result<()> {
        let mut left = len.saturating_sub(self.buf.len());
        self.buf.drain(..len.min(self.buf.len()));
        let mut chunk = [0u8; 4096];
        while left > 0 {
            match self.stream.read(&mut chunk[..left.min(4096)]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in a request's body")),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends what the client sent next to the buffer; 0 at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A response: a status and, unless 204, a JSON body.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    body: Option<String>,
}

impl Response {
    fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self { status: 200, body: Some(body) },
            // The API's types serialize infallibly (no maps with non-string
            // keys, no failing Serialize impls); answer rather than panic.
            Err(e) => Self::fault(500, format!("Cannot serialize the response: {e}.")),
        }
    }

    /// An error response: `{"fault_message": …}`.
    fn fault(status: u16, message: String) -> Self {
        Self::json(&ApiError::new(message)).with_status(status)
    }

    fn with_status(self, status: u16) -> Self {
        Self { status, ..self }
    }

    /// The bytes on the wire.
    fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: husk\r\nConnection: {}\r\n",
            self.status,
            if keep_alive { "keep-alive" } else { "close" }
        );
        // RFC 9110 8.6: no Content-Length in a 204.
        if let Some(body) = &self.body {
            let _ = write!(head, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, TryRecvError};

    use husk_api::devices::{FsCachePolicy, MAX_ID_LEN};
    use husk_api::vmm::{FullVmConfig, HugePages, InstanceInfo, InstanceState, LogLevel, VmState, MAX_VCPU_COUNT};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::rpc::VmmActionError;

    // ---- Routing and parsing ----

    fn parse(method: &str, path: &str, body: &str) -> Result<VmmAction, RequestError> {
        parse_request(method, path, body.as_bytes())
    }

    fn fault(result: Result<VmmAction, RequestError>) -> String {
        ApiError::from(result.expect_err("the request must be refused")).fault_message
    }

    #[test]
    fn get_routes() {
        assert_eq!(parse("GET", "/", "").unwrap(), VmmAction::GetInstanceInfo);
        assert_eq!(parse("GET", "/machine-config", "").unwrap(), VmmAction::GetMachineConfig);
        assert_eq!(parse("GET", "/vm/config", "").unwrap(), VmmAction::GetVmConfig);
    }

    #[test]
    fn put_actions() {
        for (name, action) in [
            ("InstanceStart", VmmAction::InstanceStart),
            ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
            ("FlushMetrics", VmmAction::FlushMetrics),
        ] {
            assert_eq!(parse("PUT", "/actions", &format!(r#"{{"action_type": "{name}"}}"#)).unwrap(), action);
        }
        let message = fault(parse("PUT", "/actions", r#"{"action_type": "Reboot"}"#));
        assert!(message.starts_with("An error occurred when deserializing the json body of a request: "), "{message}");
        assert!(message.contains("unknown variant `Reboot`"), "{message}");
        // Firecracker's own test body: an unknown field.
        assert!(fault(parse("PUT", "/actions", r#"{"action_type": "InstanceStart", "payload": "x"}"#))
            .contains("unknown field `payload`"));
    }

    #[test]
    fn put_boot_source() {
        let body = r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0", "initrd_path": "/initrd"}"#;
        assert_eq!(
            parse("PUT", "/boot-source", body).unwrap(),
            VmmAction::PutBootSource(BootSourceConfig {
                kernel_image_path: "/vmlinux".into(),
                initrd_path: Some("/initrd".into()),
                boot_args: Some("console=ttyS0".into()),
            })
        );
        assert!(fault(parse("PUT", "/boot-source", r#"{"boot_args": "quiet"}"#))
            .contains("missing field `kernel_image_path`"));
    }

    #[test]
    fn machine_config_routes() {
        let put = parse("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "2M"}"#);
        assert_eq!(
            put.unwrap(),
            VmmAction::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                huge_pages: HugePages::Hugetlbfs2M,
                ..MachineConfig::default()
            })
        );
        assert_eq!(
            parse("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#).unwrap(),
            VmmAction::PatchMachineConfig(MachineConfigUpdate { mem_size_mib: Some(512), ..Default::default() })
        );
        // Values out of range are the VMM's to refuse, with its own message.
        assert_eq!(
            parse("PUT", "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 0}"#).unwrap(),
            VmmAction::PutMachineConfig(MachineConfig { vcpu_count: 0, mem_size_mib: 0, ..MachineConfig::default() })
        );
        // Values the type cannot hold are parse errors.
        assert!(fault(parse("PUT", "/machine-config", r#"{"vcpu_count": 256, "mem_size_mib": 1}"#)).contains("u8"));
        let missing = fault(parse("PUT", "/machine-config", r#"{"vcpu_count": 1}"#));
        assert!(missing.contains("missing field `mem_size_mib`"), "{missing}");
        assert!(fault(parse("PATCH", "/machine-config", r#"{"vcpus": 2}"#)).contains("unknown field `vcpus`"));
        assert_eq!(fault(parse("PATCH", "/machine-config", "{}")), "Empty PATCH request.");
        assert!(matches!(parse("PATCH", "/machine-config", " { } "), Err(RequestError::EmptyPatch)));
    }

    #[test]
    fn put_logger_and_metrics() {
        assert_eq!(
            parse("PUT", "/logger", r#"{"log_path": "/log", "level": "warn", "show_level": true}"#).unwrap(),
            VmmAction::PutLogger(LoggerConfig {
                log_path: "/log".into(),
                level: Some(LogLevel::Warning),
                show_level: Some(true),
                show_log_origin: None,
                module: None,
            })
        );
        assert!(fault(parse("PUT", "/logger", r#"{"log_path": "/log", "level": "loud"}"#)).contains("unknown variant"));
        assert_eq!(
            parse("PUT", "/metrics", r#"{"metrics_path": "/metrics"}"#).unwrap(),
            VmmAction::PutMetrics(MetricsConfig { metrics_path: "/metrics".into() })
        );
        assert!(fault(parse("PUT", "/metrics", r#"{"path": "/m"}"#)).contains("unknown field `path`"));
    }

    #[test]
    fn patch_vm() {
        assert_eq!(parse("PATCH", "/vm", r#"{"state": "Paused"}"#).unwrap(), VmmAction::PatchVm(VmState::Paused));
        assert_eq!(parse("PATCH", "/vm", r#"{"state": "Resumed"}"#).unwrap(), VmmAction::PatchVm(VmState::Resumed));
        assert!(fault(parse("PATCH", "/vm", r#"{"state": "Stopped"}"#)).contains("unknown variant `Stopped`"));
        assert!(fault(parse("PATCH", "/vm", r#"{"invalid": "Paused"}"#)).contains("unknown field `invalid`"));
    }

    #[test]
    fn malformed_json_is_a_parse_error_naming_the_problem() {
        let message = fault(parse("PUT", "/boot-source", r#"{"kernel_image_path": "/k",}"#));
        assert_eq!(
            message,
            "An error occurred when deserializing the json body of a request: trailing comma at line 1 column 28."
        );
        assert!(fault(parse("PUT", "/boot-source", "not json")).contains("expected ident"));
        assert!(fault(parse("PUT", "/boot-source", r#"{"kernel_image_path": 7}"#)).contains("invalid type"));
        assert!(fault(parse("PUT", "/actions", r#"{"action_type": "InstanceStart"} trailing"#))
            .contains("trailing characters"));
    }

    #[test]
    fn arrays_are_refused_where_structs_would_read_them_as_fields() {
        // serde's derived structs take a sequence of field values in order.
        assert_eq!(
            fault(parse("PUT", "/machine-config", "[2, 256]")),
            "An error occurred when deserializing the json body of a request: the body is a JSON array, \
             and the API takes objects (and no arrays) in request bodies."
        );
        let body = r#"{"iface_id": "e", "host_dev_name": "t", "rx_rate_limiter": {"bandwidth": [1000, 100]}}"#;
        assert!(fault(parse("PUT", "/network-interfaces/e", body))
            .contains("field `rx_rate_limiter.bandwidth` is a JSON array"));
        assert!(fault(parse("PUT", "/metrics", r#"{"metrics_path": ["/m"]}"#))
            .contains("field `metrics_path` is a JSON array"));
        // Syntax errors still say where.
        assert!(fault(parse("PUT", "/metrics", r#"{"metrics_path": "#)).contains("line 1 column 17"));
    }

    #[test]
    fn body_checks_come_first_as_in_firecracker() {
        assert_eq!(fault(parse("GET", "/", "{}")), "GET request cannot have a body.");
        assert_eq!(fault(parse("GET", "/nowhere", "{}")), "GET request cannot have a body.");
        assert_eq!(fault(parse("PUT", "/boot-source", "")), "Empty PUT request.");
        assert_eq!(fault(parse("PUT", "/nowhere", "")), "Empty PUT request.");
        assert_eq!(fault(parse("PATCH", "/vm", "")), "Empty PATCH request.");
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        assert_eq!(fault(parse("GET", "/drives", "")), "Invalid request method and/or path: GET /drives.");
        assert_eq!(fault(parse("GET", "/actions", "")), "Invalid request method and/or path: GET /actions.");
        assert_eq!(fault(parse("PUT", "/vm/config", "{}")), "Invalid request method and/or path: PUT /vm/config.");
        assert_eq!(
            fault(parse("PATCH", "/boot-source", "{}")),
            "Invalid request method and/or path: PATCH /boot-source."
        );
        assert_eq!(
            fault(parse("DELETE", "/machine-config", "")),
            "Invalid request method and/or path: DELETE /machine-config."
        );
        assert_eq!(fault(parse("POST", "/actions", "{}")), "Invalid request method and/or path: POST /actions.");
        assert!(matches!(parse("GET", "/machine-config/extra", ""), Err(RequestError::InvalidPathMethod { .. })));
        assert!(matches!(parse("GET", "/vm", ""), Err(RequestError::InvalidPathMethod { .. })));
        assert!(matches!(parse("GET", "/machine-config?x=1", ""), Err(RequestError::InvalidPathMethod { .. })));
        assert!(matches!(parse("get", "/", ""), Err(RequestError::InvalidPathMethod { .. })));
    }

    #[test]
    fn trailing_slashes_and_absolute_targets_route() {
        assert_eq!(parse("GET", "/machine-config/", "").unwrap(), VmmAction::GetMachineConfig);
        assert_eq!(parse("GET", "http://localhost/vm/config", "").unwrap(), VmmAction::GetVmConfig);
        assert_eq!(parse("GET", "http://localhost", "").unwrap(), VmmAction::GetInstanceInfo);
        assert_eq!(parse("GET", "http://localhost/", "").unwrap(), VmmAction::GetInstanceInfo);
    }

    #[test]
    fn every_listed_route_is_routed() {
        for &(method, template) in ROUTES {
            // A path the template stands for: one id in place of the parameter.
            let path = match template.split_once('{') {
                Some((prefix, _)) => format!("{prefix}x"),
                None => template.to_string(),
            };
            let body = if method == "GET" { "" } else { "{}" };
            if let Err(RequestError::InvalidPathMethod { .. }) = parse_request(method, &path, body.as_bytes()) {
                panic!("{method} {template} is listed in ROUTES but not routed");
            }
        }
        for &(prefix, template) in ID_ROUTES {
            assert!(ROUTES.iter().any(|&(_, path)| path == template), "{template} is not in ROUTES");
            assert!(template.starts_with(&format!("{prefix}/{{")) && template.ends_with('}'), "{template}");
        }
    }

    #[test]
    fn put_vsock() {
        let body = r#"{"guest_cid": 3, "uds_path": "/run/v.sock"}"#;
        assert_eq!(
            parse("PUT", "/vsock", body).unwrap(),
            VmmAction::PutVsock(VsockConfig { vsock_id: None, guest_cid: 3, uds_path: "/run/v.sock".into() })
        );
        // Firecracker's deprecated vsock_id is still taken.
        let body = r#"{"vsock_id": "v0", "guest_cid": 4, "uds_path": "/v"}"#;
        assert!(matches!(
            parse("PUT", "/vsock", body).unwrap(),
            VmmAction::PutVsock(VsockConfig { vsock_id: Some(_), .. })
        ));
        // A CID out of range is the VMM's to refuse; one the type cannot hold is a parse error.
        assert!(matches!(parse("PUT", "/vsock", r#"{"guest_cid": 2, "uds_path": "/v"}"#), Ok(VmmAction::PutVsock(_))));
        assert!(fault(parse("PUT", "/vsock", r#"{"guest_cid": -1, "uds_path": "/v"}"#)).contains("invalid value"));
        assert!(fault(parse("PUT", "/vsock", r#"{"guest_cid": 3}"#)).contains("missing field `uds_path`"));
        assert!(fault(parse("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": "/v", "x": 1}"#))
            .contains("unknown field `x`"));
        assert_eq!(fault(parse("PUT", "/vsock", "")), "Empty PUT request.");
        assert_eq!(fault(parse("PUT", "/vsock/v0", "{}")), "Invalid request method and/or path: PUT /vsock/v0.");
        assert_eq!(fault(parse("GET", "/vsock", "")), "Invalid request method and/or path: GET /vsock.");
    }

    #[test]
    fn put_network_interface() {
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
            "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
            "tx_rate_limiter": {"ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}}"#;
        let VmmAction::PutNetworkInterface(config) = parse("PUT", "/network-interfaces/eth0", body).unwrap() else {
            panic!("not a PutNetworkInterface");
        };
        assert_eq!((config.iface_id.as_str(), config.host_dev_name.as_str()), ("eth0", "tap0"));
        // The body as sent: the MAC is the VMM's to check and normalize.
        assert_eq!(config.guest_mac.as_deref(), Some("06:00:AC:10:00:02"));
        assert_eq!(config.tx_rate_limiter.unwrap().ops.unwrap().one_time_burst, Some(5));
        // Trailing slash and absolute form, as for every route.
        let bare = r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#;
        assert!(parse("PUT", "/network-interfaces/eth0/", bare).is_ok());
        assert!(parse("PUT", "http://localhost/network-interfaces/eth0", bare).is_ok());

        assert_eq!(
            fault(parse("PUT", "/network-interfaces/eth1", bare)),
            "The id from the path [eth1] does not match the id from the body [eth0]!"
        );
        let unknown = fault(parse(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "t", "mtu": 9000}"#,
        ));
        assert!(unknown.contains("unknown field `mtu`"), "{unknown}");
        let limiter = r#"{"iface_id": "eth0", "host_dev_name": "t",
            "rx_rate_limiter": {"bytes": {"size": 1, "refill_time": 1}}}"#;
        assert!(fault(parse("PUT", "/network-interfaces/eth0", limiter)).contains("unknown field `bytes`"));
        assert!(fault(parse("PUT", "/network-interfaces/eth0", r#"{"iface_id": "eth0"}"#))
            .contains("missing field `host_dev_name`"));
        // No PATCH (Firecracker's post-boot rate limiter update) and no GET.
        assert_eq!(
            fault(parse("PATCH", "/network-interfaces/eth0", bare)),
            "Invalid request method and/or path: PATCH /network-interfaces/eth0."
        );
        assert!(matches!(parse("GET", "/network-interfaces/eth0", ""), Err(RequestError::InvalidPathMethod { .. })));
        assert!(matches!(parse("PUT", "/network-interfacesX", bare), Err(RequestError::InvalidPathMethod { .. })));
    }

    #[test]
    fn put_fs() {
        let body = r#"{"fs_id": "root", "tag": "rootfs", "shared_dir": "/srv", "read_only": true, "cache": "never"}"#;
        assert_eq!(
            parse("PUT", "/fs/root", body).unwrap(),
            VmmAction::PutFs(FsConfig {
                fs_id: "root".into(),
                tag: "rootfs".into(),
                shared_dir: "/srv".into(),
                read_only: true,
                cache: FsCachePolicy::Never,
                dax_window_mib: None,
                allow_host_root: false,
                root_uid: 65534,
                root_gid: 65534,
            })
        );
        assert_eq!(
            fault(parse("PUT", "/fs/data", body)),
            "The id from the path [data] does not match the id from the body [root]!"
        );
        assert!(fault(parse(
            "PUT",
            "/fs/root",
            r#"{"fs_id": "root", "tag": "t", "shared_dir": "/", "cache": "sometimes"}"#
        ))
        .contains("unknown variant `sometimes`"));
        assert!(
            fault(parse("PUT", "/fs/root", r#"{"fs_id": "root", "shared_dir": "/"}"#)).contains("missing field `tag`")
        );
        assert!(fault(parse("PUT", "/fs/root", r#"{"fs_id": "root", "tag": "t", "shared_dir": "/", "dax": true}"#))
            .contains("unknown field `dax`"));
        assert!(matches!(parse("GET", "/fs/root", ""), Err(RequestError::InvalidPathMethod { .. })));
    }

    #[test]
    fn ids_in_paths_are_checked_before_the_body() {
        for prefix in ["/network-interfaces", "/fs"] {
            // Firecracker's messages, whatever the body.
            for path in [prefix.to_string(), format!("{prefix}/"), format!("http://localhost{prefix}")] {
                assert_eq!(fault(parse("PUT", &path, "not json")), "The ID cannot be empty.", "{path}");
            }
            for id in ["eth-0", "a/b", "a.b", "..", "%2e%2e", "{iface_id}", "a%2Fb", "é!"] {
                assert_eq!(
                    fault(parse("PUT", &format!("{prefix}/{id}"), "not json")),
                    "API Resource IDs can only contain alphanumeric characters and underscores.",
                    "{prefix}/{id}"
                );
            }
            let long = "i".repeat(MAX_ID_LEN + 1);
            assert_eq!(
                fault(parse("PUT", &format!("{prefix}/{long}"), "{}")),
                format!("API Resource IDs can be at most {MAX_ID_LEN} bytes long.")
            );
            // The longest id is fine (and the body is parsed next).
            let longest = "i".repeat(MAX_ID_LEN);
            assert!(matches!(parse("PUT", &format!("{prefix}/{longest}"), "{}"), Err(RequestError::Json(_))));
            assert!(matches!(parse("PUT", &format!("{prefix}/eth_0"), "{}"), Err(RequestError::Json(_))));
        }
    }

    // ---- Over a real socket ----

    /// A server on a socket in a temporary directory, with a fake VMM thread
    /// answering from the channels.
    struct Harness {
        dir: TempDir,
        socket: PathBuf,
        /// Every action the fake VMM received, in order.
        seen: Receiver<VmmAction>,
    }

    impl Harness {
        fn start() -> Self {
            let dir = TempDir::new_with_prefix("/tmp/husk-api-test-").unwrap();
            let socket = dir.as_path().join("api.sock");
            let server = ApiServer::bind(&socket).unwrap();
            let (to_vmm, from_api) = mpsc::channel();
            let (to_api, from_vmm) = mpsc::channel();
            let (seen_tx, seen) = mpsc::channel();
            let wake = EventFd::new(0).unwrap();
            let vmm_wake = wake.try_clone().unwrap();
            thread::spawn(move || fake_vmm(vmm_wake, from_api, to_api, seen_tx));
            server.spawn(to_vmm, wake, from_vmm, Arc::new(SeccompFilters::disabled())).unwrap();
            Self { dir, socket, seen }
        }

        fn connect(&self) -> Client {
            Client::new(UnixStream::connect(&self.socket).unwrap())
        }
    }

    /// Answers like a VMM that was never configured. Checks that the server
    /// only ever has one request outstanding and wakes it for each.
    fn fake_vmm(wake: EventFd, from_api: Receiver<VmmAction>, to_api: Sender<VmmResponse>, seen: Sender<VmmAction>) {
        // Returns when the server drops its ends (never, in these tests).
        while wake.read().is_ok() {
            while let Ok(action) = from_api.try_recv() {
                let response = match &action {
                    VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                        app_name: "husk".into(),
                        id: "test-vm".into(),
                        state: InstanceState::NotStarted,
                        vmm_version: "0.1.0".into(),
                    })),
                    VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(MachineConfig::default())),
                    VmmAction::GetVmConfig => Ok(VmmData::VmConfig(FullVmConfig::default())),
                    VmmAction::PutMachineConfig(config) => {
                        config.validate().map(|()| VmmData::Empty).map_err(VmmActionError)
                    }
                    VmmAction::InstanceStart => Err(VmmActionError("Cannot start the VM: no boot source.".into())),
                    VmmAction::FlushMetrics => {
                        // Slow, so that concurrent clients pile up behind it.
                        thread::sleep(Duration::from_millis(5));
                        Ok(VmmData::Empty)
                    }
                    _ => Ok(VmmData::Empty),
                };
                // One request at a time: nothing else may be queued while
                // this one is unanswered.
                assert!(matches!(from_api.try_recv(), Err(TryRecvError::Empty)), "two requests outstanding");
                let _ = seen.send(action);
                if to_api.send(response).is_err() {
                    return;
                }
            }
        }
    }

    /// A raw HTTP client, so the tests control every byte.
    struct Client {
        stream: UnixStream,
        buf: Vec<u8>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn fault_message(&self) -> String {
            assert_eq!(self.header("Content-Type"), Some("application/json"));
            serde_json::from_str::<ApiError>(&self.body).unwrap().fault_message
        }
    }

    impl Client {
        fn new(stream: UnixStream) -> Self {
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Self { stream, buf: Vec::new() }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).unwrap();
        }

        fn request(&mut self, method: &str, path: &str, body: &str) -> Reply {
            let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len());
            self.send(head.as_bytes());
            self.send(body.as_bytes());
            self.reply()
        }

        fn reply(&mut self) -> Reply {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut response = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(len) = response.parse(&self.buf).unwrap() {
                    let status = response.code.unwrap();
                    let headers: Vec<(String, String)> = response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    let length = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    while self.buf.len() < len + length {
                        assert!(self.fill() > 0, "connection closed in a response");
                    }
                    let body = String::from_utf8(self.buf[len..len + length].to_vec()).unwrap();
                    self.buf.drain(..len + length);
                    return Reply { status, headers, body };
                }
                assert!(self.fill() > 0, "connection closed before a response");
            }
        }

        fn fill(&mut self) -> usize {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        /// Whether the server closed the connection (after any response).
        fn is_closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            // A server that closes with unread request bytes makes the
            // kernel report a reset instead of end of stream.
            match self.stream.read(&mut byte) {
                Ok(0) => true,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        }
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let harness = Harness::start();
        let mut client = harness.connect();

        let info = client.request("GET", "/", "");
        assert_eq!(info.status, 200);
        assert_eq!(info.header("Content-Type"), Some("application/json"));
        assert_eq!(info.header("Connection"), Some("keep-alive"));
        assert_eq!(info.header("Server"), Some("husk"));
        let info: InstanceInfo = serde_json::from_str(&info.body).unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);

        let put = client.request("PUT", "/boot-source", r#"{"kernel_image_path": "/vmlinux"}"#);
        assert_eq!((put.status, put.body.as_str()), (204, ""));
        assert_eq!(put.header("Content-Length"), None);

        let config = client.request("GET", "/vm/config", "");
        assert_eq!(config.status, 200);
        let value: serde_json::Value = serde_json::from_str(&config.body).unwrap();
        assert_eq!(value["drives"], serde_json::json!([]));
        assert_eq!(value["boot-source"], serde_json::Value::Null);

        assert_eq!(harness.seen.recv().unwrap(), VmmAction::GetInstanceInfo);
        assert!(matches!(harness.seen.recv().unwrap(), VmmAction::PutBootSource(_)));
        assert_eq!(harness.seen.recv().unwrap(), VmmAction::GetVmConfig);
    }

    #[test]
    fn refusals_and_vmm_errors_are_400_with_a_fault_message() {
        let harness = Harness::start();
        let mut client = harness.connect();

        let unknown = client.request("GET", "/drives/rootfs", "");
        assert_eq!(unknown.status, 400);
        assert_eq!(unknown.fault_message(), "Invalid request method and/or path: GET /drives/rootfs.");

        let bad_json = client.request("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 128, "x": 1}"#);
        assert_eq!(bad_json.status, 400);
        assert!(bad_json.fault_message().contains("unknown field `x`"));

        let empty = client.request("PUT", "/logger", "");
        assert_eq!((empty.status, empty.fault_message().as_str()), (400, "Empty PUT request."));

        let invalid = client.request("PUT", "/machine-config", r#"{"vcpu_count": 33, "mem_size_mib": 128}"#);
        assert_eq!(invalid.status, 400);
        assert_eq!(invalid.fault_message(), format!("vcpu_count must be between 1 and {MAX_VCPU_COUNT}, got 33"));

        let start = client.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        assert_eq!((start.status, start.fault_message().as_str()), (400, "Cannot start the VM: no boot source."));

        // Refusals keep the connection usable.
        assert_eq!(client.request("GET", "/machine-config", "").status, 200);
        // Only the requests that parsed reached the VMM.
        let seen: Vec<VmmAction> = harness.seen.try_iter().collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn body_over_the_limit_is_refused_and_the_server_lives_on() {
        let harness = Harness::start();
        let mut client = harness.connect();
        let size = MAX_PAYLOAD_SIZE + 1000;
        let body = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(size - 25));
        assert_eq!(body.len(), size);
        let reply = client.request("PUT", "/boot-source", &body);
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.fault_message(),
            format!("Request payload with size {size} is larger than the limit of 51200 allowed by server.")
        );
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(client.is_closed());

        // A client declaring a huge body is answered at once, without it.
        let mut client = harness.connect();
        client.send(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n{");
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert!(reply.fault_message().starts_with("Request payload with size 1000000000 is larger"));
        assert!(client.is_closed());

        // So is one that waits for 100 Continue before sending it.
        let mut client = harness.connect();
        client.send(b"PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 60000\r\n\r\n");
        assert_eq!(client.reply().status, 400);
        assert!(client.is_closed());

        // A body at the limit is fine.
        let body = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(MAX_PAYLOAD_SIZE - 25));
        assert_eq!(harness.connect().request("PUT", "/boot-source", &body).status, 204);
        assert!(matches!(harness.seen.try_iter().collect::<Vec<_>>()[..], [VmmAction::PutBootSource(_)]));
    }

    #[test]
    fn clients_disconnecting_mid_request_do_not_hurt_the_server() {
        let harness = Harness::start();
        for partial in [
            &b"GET / HT"[..],
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: 40\r\n",
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"kernel_image_path\"",
        ] {
            let mut client = harness.connect();
            client.send(partial);
            drop(client);
        }
        // A client that leaves without reading its response.
        let mut rude = harness.connect();
        rude.send(b"GET /machine-config HTTP/1.1\r\n\r\n");
        drop(rude);

        let mut client = harness.connect();
        assert_eq!(client.request("GET", "/", "").status, 200);
        let seen: Vec<VmmAction> = harness.seen.try_iter().collect();
        // Nothing of the partial requests reached the VMM. The rude client's
        // request was complete, so it may have been served, before or after
        // the last client's.
        assert!(seen.contains(&VmmAction::GetInstanceInfo), "{seen:?}");
        assert!(seen.iter().all(|a| matches!(a, VmmAction::GetMachineConfig | VmmAction::GetInstanceInfo)));
        assert!(seen.len() <= 2, "{seen:?}");
    }

    #[test]
    fn connection_close_and_http10_close_after_the_response() {
        let harness = Harness::start();
        let mut client = harness.connect();
        client.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let reply = client.reply();
        assert_eq!((reply.status, reply.header("Connection")), (200, Some("close")));
        assert!(client.is_closed());

        let mut client = harness.connect();
        client.send(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(client.reply().header("Connection"), Some("close"));
        assert!(client.is_closed());

        let mut client = harness.connect();
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.reply().header("Connection"), Some("keep-alive"));
        assert_eq!(client.request("GET", "/", "").status, 200);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let harness = Harness::start();
        let mut client = harness.connect();
        client.send(b"GET / HTTP/1.1\r\n\r\n");
        client.send(b"PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\":\"Resumed\"}");
        client.send(b"GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(client.reply().status, 200);
        assert_eq!(client.reply().status, 204);
        assert_eq!(client.reply().status, 400);
        assert_eq!(harness.seen.recv().unwrap(), VmmAction::GetInstanceInfo);
        assert_eq!(harness.seen.recv().unwrap(), VmmAction::PatchVm(VmState::Resumed));
    }

    #[test]
    fn expect_100_continue_is_honoured() {
        let harness = Harness::start();
        let mut client = harness.connect();
        let body = r#"{"metrics_path": "/m"}"#;
        client.send(
            format!("PUT /metrics HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
                .as_bytes(),
        );
        assert_eq!(client.reply().status, 100);
        client.send(body.as_bytes());
        assert_eq!(client.reply().status, 204);
    }

    #[test]
    fn http_level_errors_are_400_and_close_the_connection() {
        let harness = Harness::start();
        let cases: [(&[u8], &str); 5] = [
            (
                b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "Transfer-Encoding \"chunked\" is not supported",
            ),
            (b"PUT /actions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Invalid Content-Length header: \"-1\"."),
            (
                b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                "Invalid Content-Length header",
            ),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "Invalid HTTP request"),
            (b"GET / HTTP/2.0\r\n\r\n", "Invalid HTTP request"),
        ];
        for (bytes, message) in cases {
            let mut client = harness.connect();
            client.send(bytes);
            let reply = client.reply();
            assert_eq!(reply.status, 400);
            assert!(reply.fault_message().starts_with(message), "{}", reply.fault_message());
            assert!(client.is_closed());
        }

        let mut client = harness.connect();
        client.send(format!("GET / HTTP/1.1\r\nX-Padding: {}\r\n\r\n", "p".repeat(MAX_HEAD_SIZE)).as_bytes());
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert!(reply.fault_message().contains("larger than the limit of 16384 bytes"));

        assert_eq!(harness.connect().request("GET", "/", "").status, 200);
        assert_eq!(harness.seen.try_iter().collect::<Vec<_>>(), [VmmAction::GetInstanceInfo]);
    }

    #[test]
    fn concurrent_clients_reach_the_vmm_one_at_a_time() {
        let harness = Harness::start();
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let mut client = harness.connect();
                thread::spawn(move || {
                    for _ in 0..5 {
                        assert_eq!(client.request("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#).status, 204);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        // The fake VMM asserts there is never a second request queued.
        assert_eq!(harness.seen.try_iter().count(), 20);
    }

    #[test]
    fn connections_over_the_limit_get_503() {
        let harness = Harness::start();
        let mut open: Vec<Client> = (0..MAX_CONNECTIONS).map(|_| harness.connect()).collect();
        // Each is being served once it has answered a request.
        for client in &mut open {
            assert_eq!(client.request("GET", "/", "").status, 200);
        }
        let mut extra = harness.connect();
        let reply = extra.reply();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.fault_message(), "Too many open connections.");
        assert!(extra.is_closed());

        // A closed connection frees its place.
        drop(open.pop());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut client = harness.connect();
            // A server still full answers 503 and closes without reading,
            // which may fail this write; the 503 can be read all the same.
            let _ = client.stream.write_all(b"GET / HTTP/1.1\r\n\r\n");
            if client.reply().status == 200 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the place was never freed");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_vmm_that_is_gone_is_a_500() {
        let dir = TempDir::new_with_prefix("/tmp/husk-api-test-").unwrap();
        let socket = dir.as_path().join("api.sock");
        let (to_vmm, from_api) = mpsc::channel();
        let (_to_api, from_vmm) = mpsc::channel();
        drop(from_api);
        ApiServer::bind(&socket)
            .unwrap()
            .spawn(to_vmm, EventFd::new(0).unwrap(), from_vmm, Arc::new(SeccompFilters::disabled()))
            .unwrap();
        let mut client = Client::new(UnixStream::connect(&socket).unwrap());
        let reply = client.request("GET", "/", "");
        assert_eq!(reply.status, 500);
        assert_eq!(reply.fault_message(), "The VMM is not running: the request was not carried out.");
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_nothing_else() {
        let harness = Harness::start();
        // The harness's server is live; a second bind replaces its socket
        // file, as one left by a killed VMM would be.
        let stale = harness.dir.as_path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let server = ApiServer::bind(&stale).unwrap();
        assert_eq!(server.path(), stale);
        UnixStream::connect(&stale).unwrap();

        let file = harness.dir.as_path().join("not-a-socket");
        std::fs::write(&file, "precious").unwrap();
        let error = ApiServer::bind(&file).unwrap_err();
        assert!(matches!(error, ApiServerError::NotASocket { .. }), "{error}");
        assert!(error.to_string().contains("exists and is not a socket"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

        let dir = harness.dir.as_path().join("a-directory");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(ApiServer::bind(&dir), Err(ApiServerError::NotASocket { .. })));

        let missing = harness.dir.as_path().join("no/such/dir/api.sock");
        assert!(matches!(ApiServer::bind(missing), Err(ApiServerError::Bind { .. })));
    }

    #[test]
    fn responses_are_encoded_as_http_11() {
        let no_content = Response { status: 204, body: None }.encode(true);
        assert_eq!(no_content, b"HTTP/1.1 204 No Content\r\nServer: husk\r\nConnection: keep-alive\r\n\r\n");
        let fault = Response::fault(400, "no".into()).encode(false);
        assert_eq!(
            String::from_utf8(fault).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nServer: husk\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"no\"}"
        );
    }
}
