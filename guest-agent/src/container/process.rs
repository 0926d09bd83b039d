//! One process of a container as the agent holds it: its pid, the host-side
//! ends of its stdio, and its exit status once it has one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_api::agent_protocol::{ExitStatus, StdioStream};

/// The agent's ends of a process's stdio.
#[derive(Default)]
pub struct HostStdio {
    /// Written by the host; None once attached or closed.
    pub stdin: Option<File>,
    /// The attached stdin connection, kept to end it on `CloseStdin`.
    pub stdin_connection: Option<UnixStream>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The pty master; kept after attaching, for resizes.
    pub pty: Option<File>,
    pub pty_attached: bool,
}

/// The child's ends, handed to the libcontainer helper as its fds 0–2
/// (None: /dev/null).
#[derive(Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Pipes for a process without a terminal.
pub fn pipes(with_stdin: bool) -> io::Result<(HostStdio, ChildStdio)> {
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let mut host = HostStdio { stdout: Some(stdout_r.into()), stderr: Some(stderr_r.into()), ..Default::default() };
    let mut child = ChildStdio { stdin: None, stdout: Some(stdout_w), stderr: Some(stderr_w) };
    if with_stdin {
        let (stdin_r, stdin_w) = pipe()?;
        host.stdin = Some(stdin_w.into());
        child.stdin = Some(stdin_r);
    }
    Ok((host, child))
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array; close-on-exec keeps these
    // ends out of every other child (the helper gets its own by dup2).
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds, owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives the pty master the container's init sends to its console socket
/// (runc's protocol, which libcontainer follows: one SCM_RIGHTS message).
/// The helper has exited by now, so the connection is already queued.
pub fn receive_pty_master(listener: &UnixListener) -> io::Result<File> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(err) => return Err(err),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut name = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: name.as_mut_ptr().cast(), iov_len: name.len() };
    // Room for one fd's control message, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the sizes it states.
    if unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the console socket message carried no fd"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(File::from(OwnedFd::from_raw_fd(fd)))
    }
}

/// A process of a container.
pub struct Process {
    pub pid: libc::pid_t,
    pub stdio: Mutex<HostStdio>,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
}

impl Process {
    pub fn new(pid: libc::pid_t, stdio: HostStdio) -> Self {
        Self { pid, stdio: Mutex::new(stdio), exit: Mutex::new(None), exited: Condvar::new() }
    }

    pub fn set_exit(&self, status: ExitStatus) {
        *lock(&self.exit) = Some(status);
        self.exited.notify_all();
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> ExitStatus {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(status) = *exit {
                return status;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // Holding the exit lock keeps the pid from being reaped (and
        // reused) between the check and the kill.
        let exit = lock(&self.exit);
        if exit.is_some() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the process has exited"));
        }
        // SAFETY: kill with a pid and signal number; errors are returned.
        if unsafe { libc::kill(self.pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes the agent's end of `stream` for an attached connection.
    pub fn take_stream(&self, stream: StdioStream, connection: &UnixStream) -> Result<Pump, &'static str> {
        let mut stdio = lock(&self.stdio);
        let taken = match stream {
            StdioStream::Stdin => {
                let pipe = stdio.stdin.take().ok_or("stdin is not open (not requested, closed or attached)")?;
                stdio.stdin_connection = connection.try_clone().ok();
                Pump::Stdin(pipe)
            }
            StdioStream::Stdout => {
                Pump::Output(stdio.stdout.take().ok_or("stdout is attached or the process has a terminal")?)
            }
            StdioStream::Stderr => {
                Pump::Output(stdio.stderr.take().ok_or("stderr is attached or the process has a terminal")?)
            }
            StdioStream::Pty => {
                if stdio.pty_attached {
                    return Err("the pty is already attached");
                }
                let master = stdio.pty.as_ref().ok_or("the process has no terminal")?;
                let master = master.try_clone().map_err(|_| "duplicating the pty master failed")?;
                stdio.pty_attached = true;
                Pump::Pty(master)
            }
        };
        Ok(taken)
    }

    /// Ends the process's input: closes the pipe, or ends the attached
    /// stdin connection's reading side so that its pump closes the pipe.
    pub fn close_stdin(&self) {
        let mut stdio = lock(&self.stdio);
        stdio.stdin = None;
        if let Some(connection) = stdio.stdin_connection.take() {
            let _ = connection.shutdown(Shutdown::Read);
        }
    }

    pub fn resize_pty(&self, rows: u16, cols: u16) -> io::Result<()> {
        let stdio = lock(&self.stdio);
        let master = stdio.pty.as_ref().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no terminal"))?;
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Locks, ignoring poison: a panic while holding one of these locks
/// powers the VM off (the panic hook), so nobody sees poisoned state.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies between one attached connection and the process's end.
pub enum Pump {
    Stdin(File),
    Output(File),
    Pty(File),
}

impl Pump {
    /// Runs until either side ends; then closes what it owns, so that the
    /// process sees the end of its input and the host the end of output.
    pub fn run(self, mut connection: UnixStream) {
        match self {
            Pump::Stdin(mut pipe) => {
                let _ = copy(&mut connection, &mut pipe);
            }
            Pump::Output(mut pipe) => {
                let _ = copy(&mut pipe, &mut connection);
                let _ = connection.shutdown(Shutdown::Write);
            }
            Pump::Pty(master) => {
                let (Ok(mut to_master), Ok(mut from_host)) = (master.try_clone(), connection.try_clone()) else {
                    return;
                };
                let input = std::thread::Builder::new().name("pty-in".into()).spawn(move || {
                    let _ = copy(&mut from_host, &mut to_master);
                });
                let mut master = master;
                // Reading the master fails with EIO once the last process
                // holding the terminal is gone: that is its end of output.
                let _ = copy(&mut master, &mut connection);
                let _ = connection.shutdown(Shutdown::Both);
                if let Ok(input) = input {
                    let _ = input.join();
                }
            }
        }
    }
}

/// std::io::copy, but a plain read/write loop: the kernel's splice paths
/// are not all implemented for vsock and pty fds, and the loop's 64 KiB
/// buffer matches a pipe's capacity.
fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}
