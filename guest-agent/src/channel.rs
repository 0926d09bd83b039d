//! The agent's vsock listener: the host's way in (see
//! husk_api::agent_channel). One thread accepts; each connection gets a
//! thread that answers request lines until the host hangs up.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use husk_api::agent_channel::{answer, AGENT_VSOCK_PORT};

/// The longest request line read; longer ones end the connection.
const MAX_LINE: usize = 4096;

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
pub fn start() -> io::Result<()> {
    let listener = vsock_listener(AGENT_VSOCK_PORT)?;
    std::thread::Builder::new().name("vsock-accept".into()).spawn(move || accept_loop(listener))?;
    Ok(())
}

fn accept_loop(listener: OwnedFd) {
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
        let spawned = std::thread::Builder::new().name("vsock-conn".into()).spawn(move || {
            if let Err(err) = serve(stream) {
                eprintln!("husk-agent: vsock connection: {err}");
            }
        });
        if let Err(err) = spawned {
            eprintln!("husk-agent: vsock connection thread: {err}");
        }
    }
}

fn serve(stream: UnixStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            writer.write_all(b"ERROR request line too long\n")?;
            return Ok(());
        }
        writer.write_all(answer(&line, crate::ready::uptime().as_micros() as u64).as_bytes())?;
    }
}
