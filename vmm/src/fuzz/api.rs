//! Decoders of what reaches the host from outside the VMM's trust: the
//! agent protocol's frames (the guest agent's answers) and the HTTP API
//! (whoever can open the API socket).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::OnceLock;

use husk_api::agent_protocol::{decode_body, read_frame, read_raw_frame, write_frame, Request, Response};
use husk_api::vmm::{FullVmConfig, InstanceInfo, InstanceState, MachineConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::Input;
use crate::api_server::{parse_request, ApiServer};
use crate::rpc::{VmmAction, VmmActionError, VmmData};

/// A decoded message must encode to a frame that decodes to it again,
/// byte for byte the same on the second encoding.
fn check_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(message: &T) {
    let mut frame = Vec::new();
    write_frame(&mut frame, message).expect("encoding a decoded message");
    let again: T = read_frame(&mut frame.as_slice()).expect("decoding an encoded message");
    assert_eq!(&again, message, "the message changed over an encode/decode round trip");
    let mut second = Vec::new();
    write_frame(&mut second, &again).expect("encoding a decoded message");
    assert_eq!(frame, second, "the encoding of a message is not stable");
}

/// A stream of agent-protocol frames, decoded as the runtime decodes the
/// agent's answers and as the agent decodes requests.
pub fn agent_protocol(data: &[u8]) {
    let mut reader = data;
    while let Ok((header, body)) = read_raw_frame(&mut reader) {
        if let Ok(response) = decode_body::<Response>(header, &body) {
            check_round_trip(&response);
        }
        if let Ok(request) = decode_body::<Request>(header, &body) {
            check_round_trip(&request);
        }
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializing a configuration")
}

/// The method, path and body of a request that `action` came from, for
/// the actions that carry a configuration.
fn encode_action(action: &VmmAction) -> Option<(&'static str, String, Vec<u8>)> {
    Some(match action {
        VmmAction::PutBootSource(c) => ("PUT", "/boot-source".into(), json(c)),
        VmmAction::PutMachineConfig(c) => ("PUT", "/machine-config".into(), json(c)),
        VmmAction::PatchMachineConfig(c) => ("PATCH", "/machine-config".into(), json(c)),
        VmmAction::PutLogger(c) => ("PUT", "/logger".into(), json(c)),
        VmmAction::PutMetrics(c) => ("PUT", "/metrics".into(), json(c)),
        VmmAction::PutVsock(c) => ("PUT", "/vsock".into(), json(c)),
        VmmAction::PutNetworkInterface(c) => ("PUT", format!("/network-interfaces/{}", c.iface_id), json(c)),
        VmmAction::PutFs(c) => ("PUT", format!("/fs/{}", c.fs_id), json(c)),
        VmmAction::PatchVm(state) => ("PATCH", "/vm".into(), json(&serde_json::json!({ "state": state }))),
        _ => return None,
    })
}

/// A method, a path (up to the first newline) and a body, parsed as the
/// API server parses a request. A configuration it accepts must come back
/// unchanged from its own JSON.
pub fn api_request(data: &[u8]) {
    let mut input = Input::new(data);
    let method = match input.u8() % 6 {
        0 => "GET",
        1 | 2 => "PUT",
        3 => "PATCH",
        4 => "DELETE",
        _ => "POST",
    };
    let rest = input.rest();
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(end) => (&rest[..end], &rest[end + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    let Ok(action) = parse_request(method, &path, body) else { return };
    let _ = format!("{action:?}");
    if let Some((method, path, json)) = encode_action(&action) {
        match parse_request(method, &path, &json) {
            Ok(again) => assert_eq!(again, action, "{method} {path} {}", String::from_utf8_lossy(&json)),
            Err(err) => panic!("{method} {path} {}: refused its own encoding: {err}", String::from_utf8_lossy(&json)),
        }
    }
}

/// A VMM that answers every request at once: data for the GETs, and
/// success or a refusal in turn for the rest.
fn fake_vmm(actions: mpsc::Receiver<VmmAction>, answers: mpsc::Sender<crate::rpc::VmmResponse>) {
    let mut refuse = false;
    while let Ok(action) = actions.recv() {
        let answer = match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                app_name: "husk".into(),
                id: "fuzz".into(),
                state: InstanceState::NotStarted,
                vmm_version: "0".into(),
            })),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(MachineConfig::default())),
            VmmAction::GetVmConfig => Ok(VmmData::VmConfig(FullVmConfig::default())),
            _ => {
                refuse = !refuse;
                if refuse {
                    Err(VmmActionError("refused by the fuzz VMM".into()))
                } else {
                    Ok(VmmData::Empty)
                }
            }
        };
        if answers.send(answer).is_err() {
            return;
        }
    }
}

/// The API server of this process, on a socket in a temporary directory
/// (removed at exit), with a fake VMM behind it.
fn api_socket() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = TempDir::new_with_prefix("/tmp/husk-fuzz-api-").expect("temporary directory");
        let path = dir.as_path().join("api.sock");
        let server = ApiServer::bind(&path).expect("binding the API socket");
        let (to_vmm, actions) = mpsc::channel();
        let (answers, from_vmm) = mpsc::channel();
        std::thread::spawn(move || fake_vmm(actions, answers));
        let wake = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        // Without the API thread's seccomp filter: the fuzzer's instrumentation
        // makes calls husk itself does not.
        let seccomp = std::sync::Arc::new(crate::seccomp::SeccompFilters::disabled());
        server.spawn(to_vmm, wake, from_vmm, seccomp).expect("starting the API server");
        // The directory goes when the process exits (libFuzzer ends with
        // exit(), which runs no destructors of statics).
        static DIR: OnceLock<TempDir> = OnceLock::new();
        let _ = DIR.set(dir);
        extern "C" fn remove_dir() {
            if let Some(dir) = DIR.get() {
                let _ = dir.remove();
            }
        }
        // SAFETY: registers a plain function with no arguments.
        unsafe { libc::atexit(remove_dir) };
        path
    })
}

/// Bytes sent as one client connection to the API server, which answers
/// every request in them and closes; every answer must be well-formed
/// HTTP.
pub fn api_http(data: &[u8]) {
    let mut stream = UnixStream::connect(api_socket()).expect("connecting to the API server");
    stream.set_nonblocking(true).expect("non-blocking client");
    let deadline = super::deadline();
    let (mut sent, mut received) = (0, Vec::new());
    let mut buf = [0u8; 16 << 10];
    let mut shut = false;
    loop {
        assert!(std::time::Instant::now() < deadline, "the API server hung ({sent} bytes sent)");
        let mut progress = false;
        if sent < data.len() {
            match stream.write(&data[sent..]) {
                Ok(n) => {
                    sent += n;
                    progress = true;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                // The server closed after refusing a request.
                Err(_) => sent = data.len(),
            }
        }
        if sent == data.len() && !shut {
            let _ = stream.shutdown(Shutdown::Write);
            shut = true;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                progress = true;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
            Err(err) => panic!("reading from the API server: {err}"),
        }
        if !progress {
            let mut pollfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
                events: libc::POLLIN | if sent < data.len() { libc::POLLOUT } else { 0 },
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd that lives across the call.
            unsafe { libc::poll(&mut pollfd, 1, 100) };
        }
    }
    check_responses(&received);
}

/// A sequence of HTTP responses, each complete with the body its
/// Content-Length announces.
fn check_responses(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("not an HTTP response ({other:?}): {:?}", String::from_utf8_lossy(bytes)),
        };
        let code = response.code.expect("status code");
        assert!((100..600).contains(&code), "status {code}");
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).expect("Content-Length").trim().parse::<usize>().expect("length"))
            .unwrap_or(0);
        assert!(bytes.len() >= head + length, "a response's body is cut short");
        let body = &bytes[head..head + length];
        if length > 0 {
            serde_json::from_slice::<serde_json::Value>(body).expect("a response body that is not JSON");
        }
        bytes = &bytes[head + length..];
    }
}
