//! The test host: a machine where a stock Linux guest boots under KVM, in
//! which integration tests run their programs.
//!
//! - **direct**: this machine's `/dev/kvm` is hardware KVM; programs run here.
//! - **nested**: it is not (kvm-pvm here). A QEMU TCG machine exposing AMD
//!   SVM boots Debian's kernel with `kvm_amd`, sees this machine's root file
//!   system read-only and the repository read-write over 9p at the same
//!   paths, and runs programs sent to its runner (see [`crate::protocol`]).
//!
//! The nested host boots once per test run: the first test (or `husk-testhost
//! up`) starts it detached and records it under `target/husk/testhost/run/`;
//! later tests, in this process or another, find and reuse it. It powers
//! itself off after an idle period, or on `husk-testhost down`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kvm::KvmFlavour;
use crate::paths;
use crate::protocol::{ExitReport, Frame, HostInfo, Request, RunRequest, RUNNER_PORT};
use crate::runner;

/// Default memory of the nested host, MiB (`HUSK_TESTHOST_MEM_MIB`).
const DEFAULT_MEM_MIB: u32 = 4096;
/// Default vCPUs of the nested host (`HUSK_TESTHOST_CPUS`). Measured here:
/// 2 L1 vCPUs with 1-vCPU guests is reliable.
const DEFAULT_CPUS: u32 = 2;
/// Default idle time before the nested host powers off, s (`HUSK_TESTHOST_IDLE_SECS`).
const DEFAULT_IDLE_SECS: u64 = 300;
/// How long the nested host may take to boot, s (`HUSK_TESTHOST_BOOT_TIMEOUT_SECS`).
const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    #[error("{0}")]
    MissingArtifact(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the nested test host did not come up: {reason}\n--- its console (last lines) ---\n{console}")]
    Boot { reason: String, console: String },
    #[error("lost the nested test host while running {argv:?}: {source}\n--- its console (last lines) ---\n{console}")]
    Lost { argv: Vec<String>, source: io::Error, console: String },
    #[error("the test host could not start {argv:?}: {message}")]
    Start { argv: Vec<String>, message: String },
    #[error("invalid HUSK_TESTHOST={0:?}: expected direct or nested")]
    BadMode(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestHostError {
    let what = what.into();
    move |source| TestHostError::Io { what, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Nested,
}

impl Mode {
    /// `HUSK_TESTHOST` if set, else direct exactly when local KVM boots Linux.
    pub fn choose() -> Result<Self, TestHostError> {
        match std::env::var("HUSK_TESTHOST").as_deref() {
            Ok("direct") => Ok(Self::Direct),
            Ok("nested") => Ok(Self::Nested),
            Ok(other) => Err(TestHostError::BadMode(other.to_owned())),
            Err(_) if KvmFlavour::detect().boots_linux() => Ok(Self::Direct),
            Err(_) => Ok(Self::Nested),
        }
    }
}

/// What a program run in the test host did.
#[derive(Debug)]
pub struct RunOutput {
    pub report: ExitReport,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Wall time seen from this machine, including the round trip.
    pub elapsed: Duration,
}

impl RunOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A handle on the test host.
pub struct TestHost {
    mode: Mode,
    port: u16,
    state_dir: PathBuf,
}

impl TestHost {
    /// The test host for this run, booting the nested one if none is up.
    /// `runner_exe` is the `husk-testhost` binary (in integration tests:
    /// `env!("CARGO_BIN_EXE_husk-testhost")`).
    pub fn shared(runner_exe: &Path) -> Result<Self, TestHostError> {
        let state_dir = paths::artifacts_dir().join("testhost/run");
        match Mode::choose()? {
            Mode::Direct => Ok(Self { mode: Mode::Direct, port: 0, state_dir }),
            Mode::Nested => {
                let port = ensure_nested(&state_dir, runner_exe)?;
                Ok(Self { mode: Mode::Nested, port, state_dir })
            }
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What the machine that runs the programs is.
    pub fn info(&self) -> Result<HostInfo, TestHostError> {
        match self.mode {
            Mode::Direct => Ok(runner::host_info()),
            Mode::Nested => ping(self.port).map_err(io_err("pinging the nested test host")),
        }
    }

    /// Runs a program and collects its output.
    pub fn run(&self, request: &RunRequest) -> Result<RunOutput, TestHostError> {
        self.run_streaming(request, &|_| {})
    }

    /// Runs a program, handing each output frame to `on_output` as it
    /// arrives (for live progress), and collects its output.
    pub fn run_streaming(
        &self,
        request: &RunRequest,
        on_output: &(dyn Fn(&Frame) + Sync),
    ) -> Result<RunOutput, TestHostError> {
        let started = Instant::now();
        let stdout = Mutex::new(Vec::new());
        let stderr = Mutex::new(Vec::new());
        let collect = |frame: &Frame| {
            on_output(frame);
            match frame {
                Frame::Stdout(data) => stdout.lock().unwrap().extend_from_slice(data),
                Frame::Stderr(data) => stderr.lock().unwrap().extend_from_slice(data),
                _ => {}
            }
        };
        let report = match self.mode {
            Mode::Direct => runner::execute(request, &|frame| {
                collect(&frame);
                Ok(())
            })
            .map_err(|err| TestHostError::Start { argv: request.argv.clone(), message: err.to_string() })?,
            Mode::Nested => self.run_nested(request, &collect)?,
        };
        Ok(RunOutput {
            report,
            stdout: stdout.into_inner().unwrap(),
            stderr: stderr.into_inner().unwrap(),
            elapsed: started.elapsed(),
        })
    }

    fn run_nested(&self, request: &RunRequest, collect: &dyn Fn(&Frame)) -> Result<ExitReport, TestHostError> {
        let lost = |source: io::Error| TestHostError::Lost {
            argv: request.argv.clone(),
            source,
            console: console_tail(&self.state_dir),
        };
        let mut stream = connect(self.port).map_err(lost)?;
        send_request(&mut stream, &Request::Run(request.clone())).map_err(lost)?;
        // The runner in the test host ends the program at its timeout and
        // reports that; if no report comes even after a grace period, the
        // test host itself is stuck, and waiting on would hang the test
        // (and CI) without a word.
        let deadline = Instant::now() + Duration::from_secs(request.timeout_secs) + NESTED_GRACE;
        let stuck = || {
            lost(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no exit report {NESTED_GRACE:?} after the program's own timeout of {} s: the test host is stuck",
                    request.timeout_secs
                ),
            ))
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(stuck());
            }
            stream.set_read_timeout(Some(left)).map_err(lost)?;
            let frame = Frame::read_from(&mut stream).map_err(|err| match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => stuck(),
                _ => lost(err),
            })?;
            match frame {
                Some(Frame::Exit(report)) => return Ok(report),
                Some(Frame::Error(message)) => {
                    return Err(TestHostError::Start { argv: request.argv.clone(), message });
                }
                Some(frame) => collect(&frame),
                None => return Err(lost(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }
}

/// How long past a request's own timeout the host side waits for the
/// nested runner's exit report before calling the test host lost.
const NESTED_GRACE: Duration = Duration::from_secs(60);

/// Stops the nested test host of this checkout if one is up. Returns whether
/// one was running.
pub fn shutdown_nested() -> Result<bool, TestHostError> {
    let state_dir = paths::artifacts_dir().join("testhost/run");
    let _lock = lock_state(&state_dir)?;
    let Some(state) = State::load(&state_dir) else { return Ok(false) };
    let running = stop(&state);
    let _ = std::fs::remove_file(state_dir.join(STATE_FILE));
    Ok(running)
}

const STATE_FILE: &str = "state.json";

/// What `target/husk/testhost/run/state.json` records about a running host.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct State {
    qemu_pid: i32,
    port: u16,
    /// Identifies the runner binary the host was booted with: a rebuilt
    /// runner needs a fresh host.
    runner_stamp: String,
}

impl State {
    fn load(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
    }

    fn save(&self, dir: &Path) -> Result<(), TestHostError> {
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("serialisable"))
            .and_then(|()| std::fs::rename(&tmp, dir.join(STATE_FILE)))
            .map_err(io_err("saving the test host state"))
    }
}

/// A held exclusive lock on the state directory: one process boots or stops
/// the host at a time, the others wait and then reuse it.
struct StateLock(File);

impl Drop for StateLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking a file we hold open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock_state(dir: &Path) -> Result<StateLock, TestHostError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let file = File::create(dir.join("lock")).map_err(io_err("opening the test host lock"))?;
    // SAFETY: flock on an fd we own; blocks until the lock is ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("locking the test host state")(io::Error::last_os_error()));
    }
    Ok(StateLock(file))
}

/// Identifies what a nested host was booted from: the runner binary and the
/// host image. A rebuilt one of either needs a fresh host.
fn runner_stamp(runner_exe: &Path) -> Result<String, TestHostError> {
    use std::os::unix::fs::MetadataExt;
    let stamp_of = |meta: std::fs::Metadata, file: &Path| {
        format!("{}:{}.{}:{};", file.display(), meta.mtime(), meta.mtime_nsec(), meta.size())
    };
    let meta = std::fs::metadata(runner_exe).map_err(io_err(format!("runner {}", runner_exe.display())))?;
    let mut stamp = stamp_of(meta, runner_exe);
    let image = paths::artifacts_dir().join("testhost");
    for file in [image.join("vmlinuz"), image.join("initramfs.cpio")] {
        // A missing image file is reported by boot(), with the command that makes it.
        if let Ok(meta) = std::fs::metadata(&file) {
            stamp.push_str(&stamp_of(meta, &file));
        }
    }
    Ok(stamp)
}

/// Reuses the recorded nested host if it is alive and current, else boots
/// one. Returns its runner port.
fn ensure_nested(state_dir: &Path, runner_exe: &Path) -> Result<u16, TestHostError> {
    let _lock = lock_state(state_dir)?;
    let stamp = runner_stamp(runner_exe)?;
    if let Some(state) = State::load(state_dir) {
        if state.runner_stamp == stamp && qemu_alive(state.qemu_pid) && ping(state.port).is_ok() {
            return Ok(state.port);
        }
        stop(&state);
    }
    boot(state_dir, runner_exe, stamp)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn boot(state_dir: &Path, runner_exe: &Path, runner_stamp: String) -> Result<u16, TestHostError> {
    let kernel = paths::artifact("testhost/vmlinuz").map_err(TestHostError::MissingArtifact)?;
    let initrd = paths::artifact("testhost/initramfs.cpio").map_err(TestHostError::MissingArtifact)?;
    let repo = paths::repo_dir();
    for path in [&repo, &runner_exe.to_path_buf()] {
        if path.to_string_lossy().chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(TestHostError::Boot {
                reason: format!(
                    "{} has a space or comma, which QEMU's options and the kernel command line cannot carry",
                    path.display()
                ),
                console: String::new(),
            });
        }
    }
    let port = free_port().map_err(io_err("finding a free loopback port"))?;
    let idle = env_number("HUSK_TESTHOST_IDLE_SECS", DEFAULT_IDLE_SECS);
    let console = state_dir.join("console.log");
    let qemu_log = File::create(state_dir.join("qemu.log")).map_err(io_err("creating qemu.log"))?;
    let append = format!(
        "console=ttyS0 quiet panic=-1 nowatchdog nosoftlockup \
         husk_testhost.work={} husk_testhost.runner={} husk_testhost.idle={idle}",
        repo.display(),
        runner_exe.display()
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-name", "husk-testhost", "-accel", "tcg", "-cpu", "max", "-M", "q35"])
        .args(["-smp", &env_number("HUSK_TESTHOST_CPUS", DEFAULT_CPUS).to_string()])
        .args(["-m", &env_number("HUSK_TESTHOST_MEM_MIB", DEFAULT_MEM_MIB).to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args(["-serial", &format!("file:{}", console.display())])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .args(["-virtfs", &format!("local,path={},mount_tag=work,security_model=none,multidevs=remap", repo.display())])
        .args([
            "-netdev",
            &format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{RUNNER_PORT}"),
            "-device",
            "virtio-net-pci,netdev=net0",
        ])
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone().map_err(io_err("qemu.log"))?)
        .stderr(qemu_log);
    // Its own session: the host outlives the test process that booted it
    // and is not hit by that process's terminal signals.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        qemu.pre_exec(|| if libc::setsid() < 0 { Err(io::Error::last_os_error()) } else { Ok(()) });
    }
    let started = Instant::now();
    let mut child =
        qemu.spawn().map_err(io_err("starting qemu-system-x86_64 (scripts/install-deps.sh testhost installs it)"))?;
    let state = State { qemu_pid: child.id() as i32, port, runner_stamp };
    state.save(state_dir)?;

    let timeout = Duration::from_secs(env_number("HUSK_TESTHOST_BOOT_TIMEOUT_SECS", DEFAULT_BOOT_TIMEOUT_SECS));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(state_dir.join("qemu.log")).unwrap_or_default();
            return Err(TestHostError::Boot {
                reason: format!("QEMU exited with {status} after {:?}: {}", started.elapsed(), log.trim()),
                console: console_tail(state_dir),
            });
        }
        if ping(port).is_ok() {
            eprintln!("husk-testhost: nested host up in {:.1} s (port {port})", started.elapsed().as_secs_f64());
            return Ok(port);
        }
        if started.elapsed() > timeout {
            stop(&state);
            return Err(TestHostError::Boot {
                reason: format!("no answer from its runner within {timeout:?}"),
                console: console_tail(state_dir),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops a recorded host: a shutdown request, then SIGKILL if it lingers.
/// Returns whether it was running.
fn stop(state: &State) -> bool {
    if !qemu_alive(state.qemu_pid) {
        return false;
    }
    if let Ok(mut stream) = connect(state.port) {
        let _ = send_request(&mut stream, &Request::Shutdown);
        let _ = Frame::read_from(&mut stream);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_alive(state.qemu_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if qemu_alive(state.qemu_pid) {
        // SAFETY: the pid was checked to be our QEMU just above.
        unsafe { libc::kill(state.qemu_pid, libc::SIGKILL) };
    }
    true
}

/// Whether `pid` is a live (not zombie) QEMU, so a recycled pid is not taken
/// for the host.
fn qemu_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state != Some('Z') && String::from_utf8_lossy(&cmdline).contains("qemu-system")
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn connect(port: u16) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(5))
}

fn send_request(stream: &mut TcpStream, request: &Request) -> io::Result<()> {
    let mut writer = BufWriter::new(stream);
    serde_json::to_writer(&mut writer, request)?;
    writer.write_all(b"\n")?;
    writer.flush()
}

fn ping(port: u16) -> io::Result<HostInfo> {
    let mut stream = connect(port)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    send_request(&mut stream, &Request::Ping)?;
    match Frame::read_from(&mut stream)? {
        Some(Frame::Pong(info)) => Ok(info),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer to ping: {other:?}"))),
    }
}

fn console_tail(state_dir: &Path) -> String {
    crate::file_tail(&state_dir.join("console.log"), 40)
}
