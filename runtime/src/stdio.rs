//! The container's stdio on the host: the descriptors an engine gives the
//! runtime (pipes from conmon or the containerd shim, or a terminal),
//! joined to the agent's stdio streams, and the host pty whose master an
//! engine receives over its `--console-socket`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening a host pty: {0}")]
    Pty(io::Error),
    #[error("sending the pty master to the console socket {path}: {source}")]
    ConsoleSocket { path: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
}

/// Whether `fd` is /dev/null: the engine gave the container no stdin.
pub fn is_dev_null(fd: RawFd) -> bool {
    // SAFETY: fstat into a zeroed stat struct; a bad fd just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return true; // closed: nothing to read either
    }
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3)
}

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// A duplicate of one of this process's descriptors as a File.
pub fn dup_file(fd: RawFd) -> Result<File, StdioError> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(StdioError::Io { what: "duplicating a stdio descriptor", source: io::Error::last_os_error() });
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(new) })
}

/// The host side of a container's pty.
pub struct HostPty {
    /// The side the pump reads and writes: the slave of a pty whose master
    /// went to the engine, or the caller's own terminal.
    pub input: File,
    pub output: File,
    /// The descriptor whose window size is the container's.
    pub winsize_fd: RawFd,
    /// Terminal settings to restore when done (the caller's terminal).
    restore: Option<(RawFd, libc::termios)>,
}

impl Drop for HostPty {
    fn drop(&mut self) {
        if let Some((fd, termios)) = self.restore.take() {
            // SAFETY: restores settings read from the same descriptor.
            unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) };
        }
    }
}

impl HostPty {
    /// Opens a pty pair, sends its master to the engine's console socket
    /// (SCM_RIGHTS, the slave's name as the message, as runc does) and
    /// keeps the slave, in raw mode: the guest's pty does the line
    /// discipline, the host one must pass bytes through untouched.
    pub fn for_console_socket(socket: &Path) -> Result<Self, StdioError> {
        let (master, slave) = open_pty()?;
        let name = pty_name(&slave).unwrap_or_default();
        let stream = UnixStream::connect(socket)
            .map_err(|source| StdioError::ConsoleSocket { path: socket.display().to_string(), source })?;
        stream
            .send_with_fd(name.as_bytes(), master.as_raw_fd())
            .map_err(|err| StdioError::ConsoleSocket { path: socket.display().to_string(), source: err.into() })?;
        drop(master);
        make_raw(slave.as_raw_fd())?;
        let winsize_fd = slave.as_raw_fd();
        let output = slave.try_clone().map_err(|source| StdioError::Io { what: "duplicating the pty", source })?;
        Ok(Self { input: slave, output, winsize_fd, restore: None })
    }

    /// The caller's own terminal (stdin/stdout), put in raw mode for the
    /// session and restored after.
    pub fn own_terminal() -> Result<Self, StdioError> {
        let input = dup_file(0)?;
        let output = dup_file(1)?;
        let restore = if is_tty(0) {
            // SAFETY: tcgetattr into a zeroed termios.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(0, &mut saved) } == 0 {
                make_raw(0)?;
                Some((0, saved))
            } else {
                None
            }
        } else {
            None
        };
        Ok(Self { input, output, winsize_fd: 0, restore })
    }

    /// The window size (rows, columns), if the descriptor has one.
    pub fn window_size(&self) -> Option<(u16, u16)> {
        window_size(self.winsize_fd)
    }

    /// Makes the pty the caller's controlling terminal, so that a resize
    /// by the engine raises SIGWINCH here. The caller must be a session
    /// leader without a terminal (after setsid).
    pub fn make_controlling(&self) -> Result<(), StdioError> {
        // SAFETY: TIOCSCTTY takes an int argument; 0 = do not steal.
        if unsafe { libc::ioctl(self.winsize_fd, libc::TIOCSCTTY, 0) } != 0 {
            return Err(StdioError::Io {
                what: "making the pty the controlling terminal",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize struct.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 || (ws.ws_row == 0 && ws.ws_col == 0) {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}

fn open_pty() -> Result<(File, File), StdioError> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; name, termios and winsize
    // may be null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    if rc != 0 {
        return Err(StdioError::Pty(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are fresh and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: setting FD_CLOEXEC on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((File::from(master), File::from(slave)))
}

fn pty_name(file: &File) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok().map(|p| p.display().to_string())
}

fn make_raw(fd: RawFd) -> Result<(), StdioError> {
    // SAFETY: tcgetattr/cfmakeraw/tcsetattr on a termios we own.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut termios) != 0 {
            return Err(StdioError::Io { what: "reading terminal settings", source: io::Error::last_os_error() });
        }
        libc::cfmakeraw(&mut termios);
        if libc::tcsetattr(fd, libc::TCSANOW, &termios) != 0 {
            return Err(StdioError::Io { what: "setting raw mode", source: io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// Copies `from` to `to` until `from` ends, in a thread; tells `done`
/// when finished. `on_end` runs after the copy (e.g. to half-close).
pub fn pump<R, W>(
    name: &'static str,
    mut from: R,
    mut to: W,
    done: Option<mpsc::Sender<&'static str>>,
    on_end: impl FnOnce(&mut W) + Send + 'static,
) -> io::Result<thread::JoinHandle<()>>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    thread::Builder::new().name(format!("pump-{name}")).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: a pty whose other side closed.
                Err(_) => break,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.flush();
        on_end(&mut to);
        if let Some(done) = done {
            let _ = done.send(name);
        }
    })
}

/// Waits until `count` pumps reported on `done`, or `timeout` passed.
pub fn wait_pumps(done: &mpsc::Receiver<&'static str>, count: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut finished = 0;
    while finished < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            break;
        }
        finished += 1;
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_recognised() {
        let null = File::open("/dev/null").unwrap();
        assert!(is_dev_null(null.as_raw_fd()));
        let (r, _w) = UnixStream::pair().unwrap();
        assert!(!is_dev_null(r.as_raw_fd()));
    }

    #[test]
    fn a_console_socket_receives_a_working_pty_master() {
        let dir = std::env::temp_dir().join(format!("husk-stdio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let receiver = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut name = [0u8; 64];
            let (n, fd) = stream.recv_with_fd(&mut name[..]).unwrap();
            (String::from_utf8_lossy(&name[..n]).into_owned(), fd.unwrap())
        });
        let mut pty = HostPty::for_console_socket(&path).unwrap();
        let (name, master) = receiver.join().unwrap();
        assert!(name.starts_with("/dev/pts/"), "{name}");
        // Bytes typed on the master arrive unchanged (raw mode: no echo,
        // no CR translation) at the slave the pump reads, and back.
        (&master).write_all(b"a\rb\n").unwrap();
        let mut got = [0u8; 4];
        pty.input.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\rb\n");
        pty.output.write_all(b"out\n").unwrap();
        let mut back = [0u8; 4];
        (&master).read_exact(&mut back).unwrap();
        assert_eq!(&back, b"out\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
