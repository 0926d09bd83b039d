//! The agent's vsock listener: the host's way in, speaking
//! husk_api::agent_protocol. One thread accepts; each connection gets a
//! thread that answers requests until the host hangs up, or becomes the
//! pump of an attached stdio stream.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use husk_api::agent_protocol::{
    read_raw_frame, write_frame, AgentError, ErrorKind, FrameError, Request, Response, AGENT_PORT, PROTOCOL_VERSION,
};
use husk_api::guest_signal::STATUS_OK;

use crate::container::Registry;
use crate::{network, power, ready};

fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket() with constant arguments; the fd is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_vm).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(raw, 16) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Starts listening on the agent's port. Fails when the VM has no vsock
/// device.
pub fn start(registry: Arc<Registry>) -> io::Result<()> {
    let listener = vsock_listener(AGENT_PORT)?;
    std::thread::Builder::new().name("vsock-accept".into()).spawn(move || accept_loop(listener, registry))?;
    Ok(())
}

fn accept_loop(listener: OwnedFd, registry: Arc<Registry>) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&listener);
    loop {
        // SAFETY: accept4 on our listening socket; no address is wanted.
        let fd = unsafe { libc::accept4(raw, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                eprintln!("husk-agent: vsock accept: {err}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        // A connected stream socket reads and writes like a UnixStream;
        // nothing address-family specific is used on it.
        // SAFETY: fd is the accepted connection, owned from here on.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        let registry = registry.clone();
        let spawned = std::thread::Builder::new().name("vsock-conn".into()).spawn(move || {
            if let Err(err) = serve(stream, &registry) {
                eprintln!("husk-agent: vsock connection: {err}");
            }
        });
        if let Err(err) = spawned {
            eprintln!("husk-agent: vsock connection thread: {err}");
        }
    }
}

fn refuse(kind: ErrorKind, message: String) -> Response {
    Response::Error(AgentError { kind, message })
}

/// Answers requests on one connection until the host hangs up.
fn serve(mut stream: UnixStream, registry: &Registry) -> Result<(), FrameError> {
    loop {
        let (header, body) = match read_raw_frame(&mut stream) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return Ok(()),
            Err(err @ (FrameError::BadMagic(_) | FrameError::TooLong(_))) => {
                // The stream cannot be resynchronised: say why and hang up.
                let _ = write_frame(&mut stream, &refuse(ErrorKind::BadRequest, err.to_string()));
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if header.version != PROTOCOL_VERSION {
            let message = format!("the host speaks protocol version {}, this agent {PROTOCOL_VERSION}", header.version);
            write_frame(&mut stream, &refuse(ErrorKind::VersionMismatch, message))?;
            return Ok(());
        }
        let request: Request = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                write_frame(&mut stream, &refuse(ErrorKind::BadRequest, format!("undecodable request: {err}")))?;
                continue;
            }
        };
        match request {
            Request::AttachStdio { container_id, exec_id, stream: which } => {
                match registry.attach(&container_id, exec_id.as_deref(), which, &stream) {
                    Ok(pump) => {
                        write_frame(&mut stream, &Response::Attached)?;
                        pump.run(stream);
                        return Ok(());
                    }
                    Err(err) => write_frame(&mut stream, &Response::Error(err))?,
                }
            }
            Request::Shutdown => {
                write_frame(&mut stream, &Response::Done)?;
                power::power_off(STATUS_OK);
            }
            request => write_frame(&mut stream, &handle(registry, request))?,
        }
    }
}

fn net_error(err: network::NetError) -> AgentError {
    match err {
        network::NetError::Invalid(message) => AgentError { kind: ErrorKind::BadRequest, message },
        network::NetError::Failed(message) => AgentError { kind: ErrorKind::Internal, message },
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX)
}

/// Answers one control request.
fn handle(registry: &Registry, request: Request) -> Response {
    let received_us = micros(ready::uptime());
    let done = |result: Result<(), AgentError>| result.map_or_else(Response::Error, |()| Response::Done);
    match request {
        Request::Ping => Response::Pong { agent_version: env!("CARGO_PKG_VERSION").into(), uptime_us: received_us },
        Request::Create(create) => {
            registry.create(*create).map_or_else(Response::Error, |pid| Response::Created { pid, received_us })
        }
        Request::Start { container_id } => {
            registry.start(&container_id).map_or_else(Response::Error, |pid| Response::Started { pid, received_us })
        }
        Request::Exec(exec) => {
            registry.exec(*exec).map_or_else(Response::Error, |pid| Response::Started { pid, received_us })
        }
        Request::Signal { container_id, exec_id, signal, all } => {
            done(registry.signal(&container_id, exec_id.as_deref(), signal, all))
        }
        Request::Wait { container_id, exec_id } => {
            registry.wait(&container_id, exec_id.as_deref()).map_or_else(Response::Error, Response::Exited)
        }
        Request::CloseStdin { container_id, exec_id } => done(registry.close_stdin(&container_id, exec_id.as_deref())),
        Request::ResizePty { container_id, exec_id, rows, cols } => {
            done(registry.resize_pty(&container_id, exec_id.as_deref(), rows, cols))
        }
        Request::Stats { container_id } => registry.stats(&container_id).map_or_else(Response::Error, Response::Stats),
        Request::Update { container_id, resources } => done(registry.update(&container_id, &resources)),
        Request::Freeze { container_id, frozen } => done(registry.freeze(&container_id, frozen)),
        Request::ConfigureNetwork(config) => done(network::apply(&config).map_err(net_error)),
        Request::SetHostname { hostname } => done(network::set_hostname(&hostname).map_err(net_error)),
        Request::Delete { container_id, force } => done(registry.delete(&container_id, force)),
        Request::AttachStdio { .. } | Request::Shutdown => {
            refuse(ErrorKind::Internal, "handled by the connection loop".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use husk_api::agent_protocol::{read_frame, FrameHeader, MAX_BODY_LEN};

    use super::*;

    /// Runs `serve` on one end of a socket pair; returns the other end.
    fn connected() -> (UnixStream, std::thread::JoinHandle<Result<(), FrameError>>) {
        let (host, agent) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(agent, &Registry::default()));
        (host, server)
    }

    fn error_kind(response: Response) -> ErrorKind {
        match response {
            Response::Error(err) => err.kind,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_answered_until_the_host_hangs_up() {
        let (mut host, server) = connected();
        write_frame(&mut host, &Request::Ping).unwrap();
        assert!(matches!(read_frame::<Response>(&mut host).unwrap(), Response::Pong { .. }));
        write_frame(&mut host, &Request::Start { container_id: "nope".into() }).unwrap();
        assert_eq!(error_kind(read_frame(&mut host).unwrap()), ErrorKind::NotFound);
        write_frame(&mut host, &Request::Update { container_id: "nope".into(), resources: Box::default() }).unwrap();
        assert_eq!(error_kind(read_frame(&mut host).unwrap()), ErrorKind::NotFound);
        // An undecodable body is refused and the connection goes on.
        let body = br#"{"op":"format_disk"}"#;
        host.write_all(&FrameHeader { version: PROTOCOL_VERSION, len: body.len() as u32 }.encode()).unwrap();
        host.write_all(body).unwrap();
        assert_eq!(error_kind(read_frame(&mut host).unwrap()), ErrorKind::BadRequest);
        write_frame(&mut host, &Request::SetHostname { hostname: "bad host name".into() }).unwrap();
        assert_eq!(error_kind(read_frame(&mut host).unwrap()), ErrorKind::BadRequest);
        drop(host);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn another_version_is_answered_in_ours_and_the_connection_closed() {
        let (mut host, server) = connected();
        let body = br#"{"op":"ping"}"#;
        host.write_all(&FrameHeader { version: PROTOCOL_VERSION + 1, len: body.len() as u32 }.encode()).unwrap();
        host.write_all(body).unwrap();
        let (header, reply) = read_raw_frame(&mut host).unwrap();
        assert_eq!(header.version, PROTOCOL_VERSION);
        let reply: Response = serde_json::from_slice(&reply).unwrap();
        assert_eq!(error_kind(reply), ErrorKind::VersionMismatch);
        assert!(matches!(read_raw_frame(&mut host), Err(FrameError::Closed)));
        server.join().unwrap().unwrap();
    }

    #[test]
    fn garbage_and_oversized_frames_end_the_connection_with_a_reason() {
        for bytes in
            [b"GET / HTTP/1.1\r\n\r\n".to_vec(), FrameHeader { version: 1, len: MAX_BODY_LEN + 1 }.encode().to_vec()]
        {
            let (mut host, server) = connected();
            host.write_all(&bytes).unwrap();
            assert_eq!(error_kind(read_frame(&mut host).unwrap()), ErrorKind::BadRequest);
            // Closed, or reset when the agent hung up on bytes it never read.
            assert!(matches!(read_raw_frame(&mut host), Err(FrameError::Closed | FrameError::Io(_))));
            server.join().unwrap().unwrap();
        }
    }

    #[test]
    fn a_frame_cut_short_is_an_error_not_a_hang() {
        let (mut host, server) = connected();
        host.write_all(&FrameHeader { version: PROTOCOL_VERSION, len: 100 }.encode()).unwrap();
        host.write_all(b"{\"op\":").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(server.join().unwrap(), Err(FrameError::Io(_))));
    }
}
