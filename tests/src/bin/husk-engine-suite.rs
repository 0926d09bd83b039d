//! `husk-engine-suite`: podman and containerd, unchanged, running containers
//! through an OCI runtime: husk (one microVM per container), or crun and
//! runc, the baselines that prove the environment. Runs inside the test host
//! (tests/tests/engines.rs); prints `ok: …` per checked behaviour, and the
//! first failure ends the run with the command, its output and what was
//! expected.
//!
//!   husk-engine-suite podman     --runtime husk|crun|runc [--husk PATH]
//!   husk-engine-suite containerd --runtime husk|crun|runc [--husk PATH]
//!   husk-engine-suite all        --runtime husk|crun|runc [--husk PATH]   (podman, then containerd)
//!   husk-engine-suite bench [--rounds N] --runtime A [--runtime B …]
//!       `podman run --rm IMAGE /bin/true`, and `<runtime> run --bundle` of
//!       a plain bundle, rounds interleaved round-robin over the runtimes
//!       (names or paths): wall time, and the host CPU time every process
//!       the start ran used, by process accounting (acct(2), as root); one
//!       `BENCH {json}` line per sample
//!   husk-engine-suite density [--husk-count N] [--crun-count N] [--budget-mib M] [--husk PATH]
//!       idle containers started one after another with husk, then crun,
//!       until a count or memory budget; one `DENSITY {json}` line per step
//!       (engine_suite/density.rs)
//!
//! The engines keep everything under `--state` (the test host's tmpfs): a
//! podman with its own containers.conf and storage.conf (overlay driver,
//! cgroupfs, file events, netavark bridge networks), and a containerd
//! daemon of its own (no CRI plugin) that the suite starts and stops. The
//! images are the busybox test image packed by images/build-engine-images.sh,
//! imported on each run. One suite runs at a time per test host (a lock
//! beside the state directory): podman's bridge network, its iptables chains
//! and the runtimes' root directories are host-wide.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use husk_tests::acct::{Accounting, Record};

#[path = "engine_suite/density.rs"]
mod density;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
    /// The OCI runtime the engines use: husk, crun or runc. `bench` takes
    /// it repeatedly, and also a runtime binary's path.
    #[arg(long = "runtime", global = true)]
    runtimes: Vec<String>,
    /// The husk binary (default: the repository's target/debug/husk).
    #[arg(long, global = true)]
    husk: Option<PathBuf>,
    /// rootfs.tar and oci.tar (default: target/husk/images/busybox/engines).
    #[arg(long, global = true)]
    images: Option<PathBuf>,
    /// The busybox rootfs for `bench`'s plain bundle (default:
    /// target/husk/images/busybox/rootfs).
    #[arg(long, global = true)]
    rootfs: Option<PathBuf>,
    /// Where the engines keep their state; emptied first, removed at the end.
    #[arg(long, global = true, default_value = "/run/husk-engine-suite")]
    state: PathBuf,
}

#[derive(Subcommand, Clone, Copy)]
enum Suite {
    /// podman run (echo, exit code, -e/-w/-u, -v, -it), exec, stop, kill,
    /// --memory, --cpus, a published port on a bridge network, rm -f.
    Podman,
    /// ctr run (output, exit code) and ctr task exec, through containerd's
    /// runc shim with the runtime as its runc binary.
    Containerd,
    /// podman, then containerd.
    All,
    /// The main job, for scripts/demo.sh: `podman --runtime husk run` of a
    /// container that prints from inside its microVM.
    Demo,
    /// Start-up time through podman and through the runtime's own `run`.
    Bench {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Idle containers (`sleep`) started one after another with `husk run
    /// --detach`, then `crun run --detach`, until a count or a memory
    /// budget; host memory per container and start time as the host fills.
    Density {
        /// husk containers at most (0: skip husk).
        #[arg(long, default_value_t = 16)]
        husk_count: usize,
        /// crun containers at most (0: skip crun).
        #[arg(long, default_value_t = 16)]
        crun_count: usize,
        /// MemAvailable the containers of one runtime may take, MiB.
        #[arg(long, default_value_t = 2048)]
        budget_mib: u64,
    },
}

/// The image both engines run, imported from images/build-engine-images.sh's files.
const IMAGE: &str = "localhost/husk-busybox:latest";
/// containerd's namespace for the suite's containers and images.
const CTR_NAMESPACE: &str = "husk-engine-suite";
/// Any one engine command; generous, as the nested test host is slow and a
/// husk container boots a VM.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// The port a bridge-networked container's server is published on.
const PUBLISHED_PORT: u16 = 18080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Husk,
    Crun,
    Runc,
}

impl Runtime {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "husk" => Ok(Self::Husk),
            "crun" => Ok(Self::Crun),
            "runc" => Ok(Self::Runc),
            other => bail!("--runtime {other:?}: the checks know husk, crun and runc"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Husk => "husk",
            Self::Crun => "crun",
            Self::Runc => "runc",
        }
    }

    /// Where the runtime keeps its containers when the engine passes no
    /// `--root` (podman does not).
    fn default_root(self) -> &'static Path {
        Path::new(match self {
            Self::Husk => "/run/husk",
            Self::Crun => "/run/crun",
            Self::Runc => "/run/runc",
        })
    }

    /// Whether a container gets a kernel of its own.
    fn in_vm(self) -> bool {
        self == Self::Husk
    }
}

/// A program to look up on PATH, for the error when it is missing.
fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow!("{program} is not installed (scripts/install-deps.sh engines installs it)"))
}

// ---------------------------------------------------------------------------
// Running commands

/// What a finished command did.
struct Output {
    argv: String,
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Output {
    fn describe(&self) -> String {
        let ended = match (self.timed_out, self.code, self.signal) {
            (true, _, _) => "timed out and was killed".to_owned(),
            (false, Some(code), _) => format!("exited {code}"),
            (false, None, Some(signal)) => format!("was killed by signal {signal}"),
            (false, None, None) => "ended without a status".to_owned(),
        };
        format!(
            "`{}` {ended} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// The failure of a check on this command's result.
    fn fail(&self, expected: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("expected {expected}\n{}", self.describe())
    }

    fn expect_code(self, code: i32) -> Result<Self> {
        if self.code == Some(code) && !self.timed_out {
            Ok(self)
        } else {
            Err(self.fail(format_args!("exit status {code}")))
        }
    }

    fn success(self) -> Result<Self> {
        self.expect_code(0)
    }
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b)) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| shell_quote(&arg.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to its end (its process group is killed after
/// `timeout`), collecting its output.
fn run(command: &mut Command, timeout: Duration) -> Result<Output> {
    let argv = command_line(command);
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `{argv}`"))?;
    let reader = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let (status, timed_out) = wait_with_deadline(&mut child, started + timeout)?;
    Ok(Output {
        argv,
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: stdout.join().map_err(|_| anyhow!("stdout reader panicked"))?,
        stderr: stderr.join().map_err(|_| anyhow!("stderr reader panicked"))?,
        elapsed: started.elapsed(),
    })
}

/// Waits for a child started in its own process group; at the deadline the
/// whole group is killed (an engine's helpers with it).
fn wait_with_deadline(child: &mut Child, deadline: Instant) -> Result<(std::process::ExitStatus, bool)> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling the process group this child leads; no memory is touched.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            return Ok((child.wait()?, true));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The suite's environment

struct Env {
    state: PathBuf,
    husk: PathBuf,
    images: PathBuf,
    rootfs: PathBuf,
    /// Held for the whole run: one suite per test host at a time.
    _lock: File,
}

impl Env {
    fn open(cli: &Cli) -> Result<Self> {
        let repo = husk_tests::paths::repo_dir();
        let state = cli.state.clone();
        ensure!(state.is_absolute() && state.parent().is_some(), "--state must be an absolute path below /");
        let lock_path = state.with_extension("lock");
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("husk-engine-suite: another engine suite runs in this test host; waiting for it");
            // SAFETY: as above; blocks until the other suite ends.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).context("locking the engine suite");
            }
        }
        let env = Self {
            state,
            husk: cli.husk.clone().unwrap_or_else(|| repo.join("target/debug/husk")),
            images: cli.images.clone().unwrap_or_else(|| repo.join("target/husk/images/busybox/engines")),
            rootfs: cli.rootfs.clone().unwrap_or_else(|| repo.join("target/husk/images/busybox/rootfs")),
            _lock: lock,
        };
        for file in ["rootfs.tar", "oci.tar"] {
            let path = env.images.join(file);
            ensure!(path.is_file(), "{} is missing: build it with images/build-engine-images.sh", path.display());
        }
        if env.state.exists() {
            eprintln!("husk-engine-suite: clearing {} from an earlier run", env.state.display());
            env.clear_state().context("clearing what an earlier run left")?;
        }
        std::fs::create_dir_all(&env.state).with_context(|| format!("creating {}", env.state.display()))?;
        Ok(env)
    }

    fn binary(&self, runtime: Runtime) -> Result<PathBuf> {
        match runtime {
            Runtime::Husk => {
                ensure!(
                    self.husk.is_file(),
                    "{} is missing: build it with `cargo build -p husk-runtime` (or pass --husk)",
                    self.husk.display()
                );
                Ok(self.husk.clone())
            }
            other => which(other.name()),
        }
    }

    fn podman_dir(&self) -> PathBuf {
        self.state.join("podman")
    }

    fn containerd_dir(&self) -> PathBuf {
        self.state.join("containerd")
    }

    /// Ends what an earlier run (killed, or lost with its client) left in
    /// the state directory: its containers, its containerd, its mounts.
    fn clear_state(&self) -> Result<()> {
        if !self.state.exists() {
            return Ok(());
        }
        if self.podman_dir().join("containers.conf").is_file() {
            let out = run(
                podman_command(&self.podman_dir()).args(["rm", "--all", "--force", "--time", "0"]),
                COMMAND_TIMEOUT,
            )?;
            if out.code != Some(0) {
                eprintln!("husk-engine-suite: removing the earlier run's podman containers: {}", out.describe());
            }
        }
        stop_containerd_leftovers(&self.containerd_dir());
        unmount_below(&self.state)?;
        std::fs::remove_dir_all(&self.state).with_context(|| format!("removing {}", self.state.display()))
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // Later lines are mounted later, on top of earlier ones on the same
    // point: reversed, then (stably) deepest first, every mount comes off.
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .rev()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let c_path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())?;
        // SAFETY: umount2 on a NUL-terminated path; the result is checked.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            // A point already gone with its parent is fine.
            if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err).with_context(|| format!("unmounting {}", point.display()));
            }
        }
    }
    Ok(())
}

/// A mountinfo field: octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn toml_string(value: &str) -> String {
    serde_json::to_string(value).expect("a string serialises")
}

// ---------------------------------------------------------------------------
// Processes, runtime state, network devices: what a container leaves behind

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Process {
    pid: i32,
    ppid: i32,
    /// Start time in clock ticks since boot: a pid reused later does not
    /// pass for this process.
    start: u64,
    cmdline: String,
}

impl Process {
    fn read(pid: i32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(Self {
            pid,
            ppid: fields.get(1)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
            cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_owned(),
        })
    }

    fn alive(&self) -> bool {
        Process::read(self.pid).is_some_and(|now| now.start == self.start)
    }

    fn is_husk_vmm(&self) -> bool {
        self.cmdline.split(' ').next().is_some_and(|argv0| argv0.ends_with("husk-vmm"))
    }
}

fn processes() -> Vec<Process> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter_map(Process::read)
        .collect()
}

/// The processes naming `id` on their command line (conmon, a shim, a
/// runtime's monitor) and all their descendants (the container's own
/// processes, a VMM).
fn processes_of(id: &str) -> Vec<Process> {
    let all = processes();
    let named: BTreeSet<i32> = all.iter().filter(|p| p.cmdline.contains(id)).map(|p| p.pid).collect();
    with_descendants(&all, named)
}

/// The processes of `all` whose pid is in `owned`, and all their descendants.
fn with_descendants(all: &[Process], mut owned: BTreeSet<i32>) -> Vec<Process> {
    loop {
        let before = owned.len();
        let children: Vec<i32> = all.iter().filter(|p| owned.contains(&p.ppid)).map(|p| p.pid).collect();
        owned.extend(children);
        if owned.len() == before {
            break;
        }
    }
    all.iter().filter(|p| owned.contains(&p.pid)).cloned().collect()
}

/// husk runs its VMM jailed by default: the VMM's root is its jail, which
/// holds the guest's kernel and the container's rootfs share but nothing
/// of the host's root file system, and its mount namespace is its own.
fn check_jailed(vmm: &Process) -> Result<()> {
    let root = PathBuf::from(format!("/proc/{}/root", vmm.pid));
    let names = dir_names(&root);
    for expected in ["vmlinux", "initramfs.cpio", "rootfs", "dev", "vsock.sock"] {
        ensure!(names.contains(expected), "husk-vmm {}'s root lacks its jail's {expected}: {names:?}", vmm.pid);
    }
    for host in ["etc", "usr", "bin", "home", "var", "run", "tmp", "sys"] {
        ensure!(!names.contains(host), "husk-vmm {} sees the host's /{host}: its root holds {names:?}", vmm.pid);
    }
    let mount_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
    ensure!(
        mount_ns(&vmm.pid.to_string())? != mount_ns("self")?,
        "husk-vmm {} shares the host's mount namespace",
        vmm.pid
    );
    println!("ok: husk-vmm {} is jailed: its root holds only {names:?}", vmm.pid);
    Ok(())
}

fn husk_vmm_count() -> usize {
    processes().iter().filter(|p| p.is_husk_vmm()).count()
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// TUN/TAP devices in this (the host's) network namespace.
fn tap_devices() -> BTreeSet<String> {
    dir_names(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|name| Path::new("/sys/class/net").join(name).join("tun_flags").exists())
        .collect()
}

/// Host-wide things a container may create and must remove.
struct Footprint {
    taps: BTreeSet<String>,
    netns: BTreeSet<String>,
}

impl Footprint {
    fn now() -> Self {
        Self { taps: tap_devices(), netns: dir_names(Path::new("/run/netns")) }
    }
}

// ---------------------------------------------------------------------------
// podman

fn podman_command(dir: &Path) -> Command {
    let mut command = Command::new("podman");
    command
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"));
    command
}

struct Podman<'a> {
    env: &'a Env,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    /// Writes podman's configuration with `runtime` as the default runtime
    /// and imports the image.
    fn setup(env: &'a Env, runtime: &str) -> Result<Self> {
        let dir = env.podman_dir();
        std::fs::create_dir_all(&dir)?;
        let path = |name: &str| toml_string(&dir.join(name).to_string_lossy());
        let mut runtimes = format!("husk = [{}]\n", toml_string(&env.husk.to_string_lossy()));
        for name in ["crun", "runc"] {
            if let Ok(binary) = which(name) {
                writeln!(runtimes, "{name} = [{}]", toml_string(&binary.to_string_lossy()))?;
            }
        }
        let containers_conf = format!(
            r#"# Written by husk-engine-suite.
[containers]
# Within the usual hard limits: podman's default (1048576 open files)
# needs CAP_SYS_RESOURCE, which a test host that is itself a container
# (direct mode) may lack.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
# Checks ask for a bridge network where they want one.
netns = "none"

[network]
network_config_dir = {networks}

[engine]
# No systemd in the test host.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events}
tmp_dir = {tmp}
runtime = {runtime}
runtime_supports_json = ["crun", "runc", "husk"]
runtime_supports_kvm = ["husk"]

[engine.runtimes]
{runtimes}"#,
            networks = path("networks"),
            events = path("events.log"),
            tmp = path("tmp"),
            runtime = toml_string(runtime),
        );
        std::fs::write(dir.join("containers.conf"), containers_conf)?;
        let storage_conf = format!(
            "# Written by husk-engine-suite.\n[storage]\ndriver = \"overlay\"\ngraphroot = {}\nrunroot = {}\n",
            path("storage"),
            path("run"),
        );
        std::fs::write(dir.join("storage.conf"), storage_conf)?;
        let podman = Self { env, dir };
        let info =
            podman.run(&["info", "--format", "{{.Host.CgroupsVersion}} {{.Store.GraphDriverName}}"])?.success()?;
        let tar = env.images.join("rootfs.tar");
        podman
            .run_args(&["import", "--change", r#"CMD ["/bin/sh"]"#], &[tar.as_os_str(), IMAGE.as_ref()])?
            .success()?;
        eprintln!(
            "husk-engine-suite: podman ready (cgroups, storage driver: {}), {IMAGE} imported",
            info.stdout.trim()
        );
        Ok(podman)
    }

    fn command(&self) -> Command {
        podman_command(&self.dir)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        run(self.command().args(args), COMMAND_TIMEOUT)
    }

    fn run_args(&self, args: &[&str], more: &[&std::ffi::OsStr]) -> Result<Output> {
        run(self.command().args(args).args(more), COMMAND_TIMEOUT)
    }

    /// `podman run -d …`: the new container's id.
    fn start_detached(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["run", "--detach"];
        argv.extend_from_slice(args);
        let out = self.run(&argv)?.success()?;
        let id = out.stdout.trim().to_owned();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(out.fail("a 64-hex container id on stdout"));
        }
        Ok(id)
    }

    /// Polls `podman logs` until `needle` shows.
    fn wait_for_log(&self, id: &str, needle: &str) -> Result<()> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let out = self.run(&["logs", id])?.success()?;
            if out.stdout.contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(out.fail(format_args!("{needle:?} in the container's log within {COMMAND_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `podman wait`: the exit code it prints.
    fn wait_exit(&self, id: &str) -> Result<i32> {
        let out = self.run(&["wait", id])?.success()?;
        out.stdout.trim().parse().map_err(|_| out.fail("an exit code from podman wait"))
    }

    /// Removes everything the suite's podman created.
    fn teardown(&self, failed: bool) -> Result<()> {
        if failed {
            if let Ok(out) = self.run(&["ps", "--all"]) {
                eprintln!("husk-engine-suite: podman's containers at the failure:\n{}", out.stdout.trim_end());
            }
            // What the runtime logged for each container (podman passes
            // --log <userdata>/oci-log): e.g. why a microVM ended.
            for log in files_named(&self.dir, &["oci-log"]) {
                print_tail(&log);
            }
            // A microVM still booting (or stalled) when a command timed out
            // has logged nothing there yet: its VMM's log and console tell.
            let husk_root = Runtime::Husk.default_root();
            for log in files_named(husk_root, &["vmm.log", "console.log"]) {
                print_tail(&log);
            }
        }
        self.run(&["rm", "--all", "--force", "--time", "0"])?.success()?;
        // The storage's own mounts (image layers, the overlay home).
        unmount_below(&self.dir)?;
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

/// Prints a log file's last lines to stderr, if it has any.
fn print_tail(log: &Path) {
    let tail = husk_tests::file_tail(log, 40);
    if !tail.is_empty() {
        eprintln!("husk-engine-suite: {}:\n{tail}", log.display());
    }
}

/// Files called one of `names` below `dir` (not following symbolic links),
/// sorted: the files of one directory (one microVM's logs) come together.
fn files_named(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_file() && names.iter().any(|name| entry.file_name() == *name) => {
                    found.push(entry.path())
                }
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// Runs `body` with a podman set up for `runtime`, and tears it down
/// whatever the outcome.
fn with_podman(env: &Env, runtime: &str, body: impl FnOnce(&Podman) -> Result<()>) -> Result<()> {
    let podman = Podman::setup(env, runtime)?;
    let result = body(&podman);
    let teardown = podman.teardown(result.is_err()).context("tearing podman down");
    match (result, teardown) {
        (Err(err), Err(teardown)) => Err(err.context(format!("(and then {teardown:#})"))),
        (result, teardown) => result.and(teardown),
    }
}

fn podman_checks(podman: &Podman, runtime: Runtime) -> Result<()> {
    let host_kernel = read_trimmed("/proc/sys/kernel/osrelease")?;

    let out = podman.run(&["run", "--rm", IMAGE, "echo", "hello from podman"])?.success()?;
    if out.stdout != "hello from podman\n" {
        return Err(out.fail("stdout \"hello from podman\\n\""));
    }
    println!("ok: podman run --rm echoes ({:.1} s)", out.elapsed.as_secs_f64());

    let out = podman.run(&["run", "--rm", IMAGE, "sh", "-c", "exit 42"])?.expect_code(42)?;
    println!("ok: the container's exit code 42 is podman's ({:.1} s)", out.elapsed.as_secs_f64());

    let script = r#"echo "$GREETING"; pwd; id"#;
    let out = podman
        .run(&[
            "run",
            "--rm",
            "-e",
            "GREETING=hello env",
            "-w",
            "/home/guest",
            "-u",
            "guest",
            IMAGE,
            "sh",
            "-c",
            script,
        ])?
        .success()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    if lines.len() != 3
        || lines[0] != "hello env"
        || lines[1] != "/home/guest"
        || !lines[2].starts_with("uid=1000(guest) gid=1000(guest)")
    {
        return Err(out.fail("\"hello env\", \"/home/guest\" and uid=1000(guest) gid=1000(guest)"));
    }
    println!("ok: -e, -w and -u guest apply ({})", lines[2]);

    volume(podman)?;
    interactive(podman)?;
    exec_and_rm(podman, runtime, &host_kernel)?;
    stop_and_kill(podman)?;
    resources(podman, runtime)?;
    bridge(podman, runtime)?;
    Ok(())
}

fn read_trimmed(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?.trim().to_owned())
}

fn volume(podman: &Podman) -> Result<()> {
    let dir = podman.env.state.join("volume");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("from-host"), "written on the host\n")?;
    let mount = format!("{}:/data", dir.display());
    let script = "cat /data/from-host && echo 'written in the container' > /data/from-container";
    let out = podman.run(&["run", "--rm", "-v", &mount, IMAGE, "sh", "-c", script])?.success()?;
    if out.stdout != "written on the host\n" {
        return Err(out.fail("the host's file on stdout: \"written on the host\\n\""));
    }
    let back = std::fs::read_to_string(dir.join("from-container")).unwrap_or_default();
    if back != "written in the container\n" {
        return Err(out.fail(format_args!(
            "{}/from-container to hold \"written in the container\\n\", it holds {back:?}",
            dir.display()
        )));
    }
    println!("ok: -v: the container reads the host's file and the host reads the container's");
    Ok(())
}

/// A pty pair whose slave becomes the controlling terminal of the child.
fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two descriptors into the ints we pass; the
    // name and termios pointers may be null.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: openpty succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Reads what the pty master has until `done` says so, the child's side
/// closes (EIO), or the deadline.
fn read_pty(
    master: &mut File,
    transcript: &mut String,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> Result<bool> {
    let mut buf = [0u8; 4096];
    while !done(transcript) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut poll = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as libc::c_int) };
        if ready < 0 {
            return Err(std::io::Error::last_os_error()).context("polling the pty");
        }
        if ready == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) => return Ok(done(transcript)),
            Ok(n) => transcript.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EIO: every slave descriptor is closed, the session is over.
            Err(err) if err.raw_os_error() == Some(libc::EIO) => return Ok(done(transcript)),
            Err(err) => return Err(err).context("reading the pty"),
        }
    }
    Ok(true)
}

fn interactive(podman: &Podman) -> Result<()> {
    let (master, slave) = open_pty()?;
    let mut command = podman.command();
    command.args(["run", "-it", "--rm", IMAGE, "sh"]);
    let argv = command_line(&command);
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .env("TERM", "xterm");
    // SAFETY: setsid and ioctl are async-signal-safe and touch no memory of
    // the parent; fd 0 is the pty slave here.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting `{argv}`"))?;
    // Our copies of the slave go with the Command, so the master sees EIO
    // once the session ends.
    drop(command);
    let mut master = File::from(master);
    let mut transcript = String::new();
    let deadline = started + COMMAND_TIMEOUT;
    let failed = |transcript: &str, child: &mut Child, expected: &str| {
        // SAFETY: signalling the session (and process group) the child leads.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
        anyhow!("`{argv}` on a pty: expected {expected}\n--- the terminal showed ---\n{transcript}")
    };
    if !read_pty(&mut master, &mut transcript, deadline, |seen| seen.contains("# "))? {
        return Err(failed(&transcript, &mut child, "the shell's prompt \"# \""));
    }
    // The typed line holds `$((6*7))`; only the shell's answer holds 42.
    master.write_all(b"echo answer-$((6*7)); tty; exit 3\r")?;
    let answered = read_pty(&mut master, &mut transcript, deadline, |seen| {
        seen.contains("answer-42") && seen.contains("/dev/pts/")
    })?;
    if !answered {
        return Err(failed(&transcript, &mut child, "\"answer-42\" and a /dev/pts/ tty in the answer"));
    }
    // Drain to the end of the session, then collect the status.
    read_pty(&mut master, &mut transcript, deadline, |_| false)?;
    let (status, timed_out) = wait_with_deadline(&mut child, deadline)?;
    if timed_out || status.code() != Some(3) {
        return Err(anyhow!(
            "`{argv}` on a pty: expected exit status 3 after `exit 3`, got {status:?}{}\n--- the terminal showed ---\n{transcript}",
            if timed_out { " (timed out)" } else { "" }
        ));
    }
    println!(
        "ok: podman run -it on a pty: typed a command, read its answer, `exit 3` ended the session with 3 ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn exec_and_rm(podman: &Podman, runtime: Runtime, host_kernel: &str) -> Result<()> {
    let before = Footprint::now();
    let id = podman.start_detached(&[IMAGE, "sleep", "1000"])?;
    let out = podman.run(&["exec", &id, "sh", "-c", r#"uname -r; tr '\0' ' ' < /proc/1/cmdline"#])?.success()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    if lines.len() != 2 || lines[1].trim_end() != "sleep 1000" {
        return Err(out.fail("the container's kernel release, then its pid 1 `sleep 1000`"));
    }
    let kernel = lines[0];
    if runtime.in_vm() && kernel == host_kernel {
        return Err(out.fail(format_args!("a kernel other than the test host's {host_kernel} (a VM's)")));
    }
    if !runtime.in_vm() && kernel != host_kernel {
        return Err(out.fail(format_args!("the test host's kernel {host_kernel} (crun/runc share it)")));
    }
    println!(
        "ok: podman exec runs in the container (its pid 1 is `sleep 1000`); its kernel is {kernel}, the test host's {host_kernel}"
    );
    rm_leaves_nothing(podman, runtime, &id, &before)
}

/// `podman rm -f` of the running container `id`: afterwards no process of
/// it (conmon, a monitor, a VMM, the container's own), no entry in the
/// runtime's root, and no TAP device or network namespace it added.
fn rm_leaves_nothing(podman: &Podman, runtime: Runtime, id: &str, before: &Footprint) -> Result<()> {
    let running = processes_of(id);
    ensure!(!running.is_empty(), "no process names container {id} while it runs");
    let vmms: Vec<&Process> = running.iter().filter(|p| p.is_husk_vmm()).collect();
    if runtime.in_vm() {
        ensure!(!vmms.is_empty(), "no husk-vmm among container {id}'s processes: {running:#?}");
        for vmm in &vmms {
            check_jailed(vmm)?;
        }
    }
    let record = runtime.default_root().join(id);
    ensure!(record.exists(), "{} does not exist while container {id} runs", record.display());
    let during = Footprint::now();
    let new_taps: BTreeSet<String> = during.taps.difference(&before.taps).cloned().collect();
    let new_netns: BTreeSet<String> = during.netns.difference(&before.netns).cloned().collect();
    let vmm_count = husk_vmm_count();

    let removed = Instant::now();
    // A short grace period: the SIGTERM, then SIGKILL sequence without
    // waiting out the default 10 s for a pid 1 that ignores SIGTERM.
    podman.run(&["rm", "--force", "--time", "3", id])?.success()?;
    // conmon ends, and runs podman's cleanup, a moment after the container:
    // give what is left a while to go.
    let deadline = removed + Duration::from_secs(60);
    let leftovers = loop {
        let mut left = Vec::new();
        left.extend(running.iter().filter(|p| p.alive()).map(|p| format!("process {} `{}`", p.pid, p.cmdline)));
        left.extend(
            processes()
                .into_iter()
                .filter(|p| p.cmdline.contains(id) && !running.contains(p))
                .map(|p| format!("process {} `{}`", p.pid, p.cmdline)),
        );
        if record.exists() {
            left.push(format!("the runtime's record {}", record.display()));
        }
        let now = Footprint::now();
        left.extend(new_taps.intersection(&now.taps).map(|tap| format!("TAP device {tap}")));
        left.extend(new_netns.intersection(&now.netns).map(|ns| format!("network namespace /run/netns/{ns}")));
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(leftovers.is_empty(), "`podman rm -f {id}` left behind, 60 s later:\n  {}", leftovers.join("\n  "));
    let mut detail = format!("{} processes", running.len());
    if !new_taps.is_empty() {
        write!(detail, ", TAP {}", new_taps.iter().cloned().collect::<Vec<_>>().join(","))?;
    }
    if runtime.in_vm() {
        write!(
            detail,
            ", {} husk-vmm (husk-vmm processes in the host: {vmm_count} before, {} after)",
            vmms.len(),
            husk_vmm_count()
        )?;
    }
    println!(
        "ok: podman rm -f leaves nothing behind ({detail}; {} gone; all gone {:.1} s after the rm)",
        record.display(),
        removed.elapsed().as_secs_f64()
    );
    Ok(())
}

fn stop_and_kill(podman: &Podman) -> Result<()> {
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    let id = podman.start_detached(&[IMAGE, "sh", "-c", script])?;
    podman.wait_for_log(&id, "ready")?;
    let stop = podman.run(&["stop", "--time", "120", &id])?.success()?;
    let code = podman.wait_exit(&id)?;
    let logs = podman.run(&["logs", &id])?.success()?;
    if code != 7 || !logs.stdout.contains("got TERM") {
        return Err(logs.fail(format_args!(
            "exit code 7 and \"got TERM\" in the log after `podman stop`; the exit code is {code}"
        )));
    }
    podman.run(&["rm", &id])?.success()?;
    println!("ok: podman stop: the container's shell traps SIGTERM and exits 7 ({:.1} s)", stop.elapsed.as_secs_f64());

    let id = podman.start_detached(&[IMAGE, "sleep", "1000"])?;
    podman.run(&["kill", &id])?.success()?;
    let code = podman.wait_exit(&id)?;
    ensure!(code == 137, "after `podman kill {id}` (SIGKILL) podman wait reported {code}, expected 137");
    podman.run(&["rm", &id])?.success()?;
    println!("ok: podman kill: the container ends with 137");
    Ok(())
}

fn meminfo_total_kib(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// The value of a `key=value` line the resources script printed.
fn labelled<'o>(stdout: &'o str, key: &str) -> Option<&'o str> {
    stdout.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
}

fn resources(podman: &Podman, runtime: Runtime) -> Result<()> {
    // Labelled lines: a cgroup file a VM's guest does not have reads as
    // an error message, not as a shifted line.
    let script = "grep MemTotal /proc/meminfo; echo nproc=$(nproc); \
                  echo memory.max=$(cat /sys/fs/cgroup/memory.max 2>&1); echo cpu.max=$(cat /sys/fs/cgroup/cpu.max 2>&1)";
    let out = podman.run(&["run", "--rm", "--memory", "128m", "--cpus", "2", IMAGE, "sh", "-c", script])?.success()?;
    let mem_kib = meminfo_total_kib(&out.stdout).ok_or_else(|| out.fail("a MemTotal line"))?;
    let nproc: usize =
        labelled(&out.stdout, "nproc").and_then(|n| n.parse().ok()).ok_or_else(|| out.fail("nproc's count"))?;
    let memory_max = labelled(&out.stdout, "memory.max").unwrap_or_default();
    let cpu_max = labelled(&out.stdout, "cpu.max").unwrap_or_default();
    let host_kib = meminfo_total_kib(&std::fs::read_to_string("/proc/meminfo")?).context("the test host's MemTotal")?;
    let host_cpus = std::thread::available_parallelism()?.get();
    let mib = |kib: u64| kib as f64 / 1024.0;
    if runtime.in_vm() {
        if !(128 * 1024..=256 * 1024).contains(&mem_kib) {
            return Err(out.fail(format_args!(
                "MemTotal between 128 and 256 MiB (the limit plus the guest's overhead), got {:.1} MiB",
                mib(mem_kib)
            )));
        }
        println!(
            "ok: --memory 128m sizes the VM: MemTotal {:.1} MiB (the test host has {:.1} MiB; memory.max in the guest: {memory_max})",
            mib(mem_kib),
            mib(host_kib)
        );
        if nproc != 2 {
            return Err(out.fail(format_args!("nproc 2 for --cpus 2, got {nproc}")));
        }
        println!("ok: --cpus 2 gives the VM 2 vCPUs (nproc 2; cpu.max in the guest: {cpu_max})");
    } else {
        if mem_kib != host_kib || memory_max != "134217728" {
            return Err(out.fail(format_args!(
                "memory.max 134217728 and the test host's MemTotal {host_kib} kB (a shared kernel)"
            )));
        }
        println!("ok: --memory 128m: memory.max 134217728, MemTotal the host's {:.1} MiB", mib(host_kib));
        if nproc != host_cpus || cpu_max != "200000 100000" {
            return Err(out.fail(format_args!("nproc {host_cpus} (the host's) and cpu.max \"200000 100000\"")));
        }
        println!("ok: --cpus 2: cpu.max 200000 100000, nproc the host's {host_cpus}");
    }
    Ok(())
}

/// One HTTP/1.0 GET; the response as text.
fn http_get(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address.parse().expect("a socket address"), Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: husk\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn bridge(podman: &Podman, runtime: Runtime) -> Result<()> {
    let before = Footprint::now();
    let publish = format!("{PUBLISHED_PORT}:8080");
    let script = "mkdir -p /www && echo 'hello over the bridge' > /www/index.html && exec httpd -f -p 8080 -h /www";
    let id = podman.start_detached(&["--network", "bridge", "-p", &publish, IMAGE, "sh", "-c", script])?;
    let address = format!("127.0.0.1:{PUBLISHED_PORT}");
    let started = Instant::now();
    let deadline = started + COMMAND_TIMEOUT;
    let mut last;
    loop {
        match http_get(&address) {
            Ok(response) if response.contains("hello over the bridge") => break,
            Ok(response) => last = format!("answered {response:?}"),
            Err(err) => last = err.to_string(),
        }
        if Instant::now() > deadline {
            let logs = podman.run(&["logs", &id]).map(|o| o.describe()).unwrap_or_default();
            bail!(
                "the container's httpd behind -p {publish} on a bridge network did not answer on {address} within \
                 {COMMAND_TIMEOUT:?} (last: {last})\n{logs}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "ok: --network bridge -p {publish}: the container's httpd answers on {address} ({:.1} s after start)",
        started.elapsed().as_secs_f64()
    );
    rm_leaves_nothing(podman, runtime, &id, &before)
}

// ---------------------------------------------------------------------------
// containerd

struct Containerd<'a> {
    env: &'a Env,
    dir: PathBuf,
    daemon: Child,
}

fn stop_containerd_leftovers(dir: &Path) {
    let marker = dir.to_string_lossy().into_owned();
    for process in processes() {
        let is_ours = process.cmdline.contains(&marker)
            && (process.cmdline.starts_with("containerd ") || process.cmdline.contains("containerd-shim"));
        if is_ours {
            // SAFETY: signalling a process identified just above; no memory is touched.
            unsafe { libc::kill(process.pid, libc::SIGKILL) };
        }
    }
}

impl<'a> Containerd<'a> {
    fn start(env: &'a Env) -> Result<Self> {
        let dir = env.containerd_dir();
        std::fs::create_dir_all(&dir)?;
        let path = |name: &str| toml_string(&dir.join(name).to_string_lossy());
        let config = format!(
            r#"# Written by husk-engine-suite.
version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
            root = path("root"),
            state = path("state"),
            socket = path("containerd.sock"),
            ttrpc = path("containerd.sock.ttrpc"),
            opt = path("opt"),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let log = File::create(dir.join("containerd.log"))?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting containerd (scripts/install-deps.sh engines installs it)")?;
        let containerd = Self { env, dir, daemon };
        let started = Instant::now();
        loop {
            let out = containerd.run(&["version"])?;
            if out.code == Some(0) {
                break;
            }
            if started.elapsed() > COMMAND_TIMEOUT {
                return Err(out
                    .fail(format_args!("containerd to answer within {COMMAND_TIMEOUT:?}; {}", containerd.log_tail())));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let tar = env.images.join("oci.tar");
        let base = IMAGE.trim_end_matches(":latest");
        containerd.run_args(&["image", "import", "--base-name", base], &[tar.as_os_str()])?.success()?;
        let list = containerd.run(&["image", "list", "--quiet"])?.success()?;
        if !list.stdout.lines().any(|name| name.trim() == IMAGE) {
            return Err(list.fail(format_args!("{IMAGE} among the images after importing {}", tar.display())));
        }
        eprintln!("husk-engine-suite: containerd up in {:.1} s, {IMAGE} imported", started.elapsed().as_secs_f64());
        Ok(containerd)
    }

    fn command(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(self.dir.join("containerd.sock")).args(["--namespace", CTR_NAMESPACE]);
        command
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        run(self.command().args(args), COMMAND_TIMEOUT)
    }

    fn run_args(&self, args: &[&str], more: &[&std::ffi::OsStr]) -> Result<Output> {
        run(self.command().args(args).args(more), COMMAND_TIMEOUT)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("containerd's log ends with:\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    /// Deletes the suite's tasks and containers, stops the daemon and its
    /// shims, and removes its directories.
    fn teardown(mut self, failed: bool) -> Result<()> {
        if failed {
            eprintln!("husk-engine-suite: {}", self.log_tail());
        }
        let mut result = Ok(());
        if let Ok(out) = self.run(&["container", "list", "--quiet"]) {
            for id in out.stdout.lines().map(str::trim).filter(|id| !id.is_empty()) {
                let _ = self.run(&["task", "delete", "--force", id]);
                if let Err(err) = self.run(&["container", "delete", id]).and_then(Output::success) {
                    result = Err(err);
                }
            }
        }
        // SAFETY: signalling our own child; no memory is touched.
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        let (_, timed_out) = wait_with_deadline(&mut self.daemon, Instant::now() + Duration::from_secs(60))?;
        if timed_out {
            eprintln!("husk-engine-suite: containerd ignored SIGTERM for 60 s and was killed");
        }
        stop_containerd_leftovers(&self.dir);
        unmount_below(&self.dir)?;
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        result
    }
}

fn with_containerd(env: &Env, body: impl FnOnce(&Containerd) -> Result<()>) -> Result<()> {
    let containerd = Containerd::start(env)?;
    let result = body(&containerd);
    let teardown = containerd.teardown(result.is_err()).context("tearing containerd down");
    match (result, teardown) {
        (Err(err), Err(teardown)) => Err(err.context(format!("(and then {teardown:#})"))),
        (result, teardown) => result.and(teardown),
    }
}

fn containerd_checks(containerd: &Containerd, runtime: Runtime) -> Result<()> {
    let binary = containerd.env.binary(runtime)?;
    let binary = binary.to_string_lossy();
    let host_kernel = read_trimmed("/proc/sys/kernel/osrelease")?;
    let shim = ["--runtime", "io.containerd.runc.v2", "--runc-binary", &*binary];

    let mut argv = vec!["run", "--rm"];
    argv.extend_from_slice(&shim);
    argv.extend_from_slice(&[IMAGE, "hes-ctr-run", "sh", "-c", "echo hello from containerd; uname -r; exit 42"]);
    let out = containerd.run(&argv)?.expect_code(42)?;
    let lines: Vec<&str> = out.stdout.lines().map(str::trim_end).collect();
    if lines.len() != 2 || lines[0] != "hello from containerd" {
        return Err(out.fail("\"hello from containerd\" and the kernel release"));
    }
    if runtime.in_vm() == (lines[1] == host_kernel) {
        let which = if runtime.in_vm() { "another kernel than" } else { "the same kernel as" };
        return Err(out.fail(format_args!("{which} the test host's {host_kernel}")));
    }
    println!(
        "ok: ctr run --rm through the runc shim with {binary}: output arrives, exit code 42 passes through, kernel {} ({:.1} s)",
        lines[1],
        out.elapsed.as_secs_f64()
    );

    let mut argv = vec!["run", "--detach"];
    argv.extend_from_slice(&shim);
    argv.extend_from_slice(&[IMAGE, "hes-ctr-exec", "sleep", "1000"]);
    containerd.run(&argv)?.success()?;
    let script = r#"echo from exec; tr '\0' ' ' < /proc/1/cmdline; echo; exit 5"#;
    let out = containerd
        .run(&["task", "exec", "--exec-id", "hes-exec-1", "hes-ctr-exec", "sh", "-c", script])?
        .expect_code(5)?;
    if out.stdout.lines().map(str::trim_end).collect::<Vec<_>>() != ["from exec", "sleep 1000"] {
        return Err(out.fail("\"from exec\" and the container's pid 1 `sleep 1000`"));
    }
    println!("ok: ctr task exec runs in the running task (it sees `sleep 1000` as pid 1; exit code 5 passes through)");

    containerd.run(&["task", "kill", "--signal", "SIGKILL", "hes-ctr-exec"])?.success()?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let out = containerd.run(&["task", "list"])?.success()?;
        let status = out.stdout.lines().find(|l| l.starts_with("hes-ctr-exec ")).map(|l| l.split_whitespace().last());
        if status == Some(Some("STOPPED")) {
            break;
        }
        if Instant::now() > deadline {
            return Err(out.fail(format_args!("task hes-ctr-exec STOPPED within {COMMAND_TIMEOUT:?} of SIGKILL")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    containerd.run(&["task", "delete", "hes-ctr-exec"])?.success()?;
    containerd.run(&["container", "delete", "hes-ctr-exec"])?.success()?;
    let left = containerd.run(&["container", "list", "--quiet"])?.success()?;
    if !left.stdout.trim().is_empty() {
        return Err(left.fail("no containers left"));
    }
    println!("ok: ctr task kill SIGKILL stops the task; task delete and container delete remove it");
    Ok(())
}

// ---------------------------------------------------------------------------
// demo

fn demo(env: &Env) -> Result<()> {
    env.binary(Runtime::parse("husk")?)?;
    with_podman(env, "husk", |podman| {
        let script = "echo hello from a container in a husk microVM; \
                      echo \"kernel $(uname -r), $(nproc) vCPU, $(grep MemTotal /proc/meminfo | tr -s ' ')\"";
        println!("$ podman --runtime husk run --rm {IMAGE} sh -c '…'");
        let out = podman.run(&["run", "--rm", IMAGE, "sh", "-c", script])?.success()?;
        print!("{}", out.stdout);
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        println!(
            "(podman took {:.1} s; the host running podman has kernel {})",
            out.elapsed.as_secs_f64(),
            host_kernel.trim()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// bench

/// A runtime as `bench` names it: a label, what podman's --runtime gets,
/// and the binary for a plain `run`.
struct BenchRuntime {
    label: String,
    podman_name: String,
    binary: PathBuf,
    /// The name process accounting gives the binary's processes: its file
    /// name, cut to the kernel's 15 bytes.
    comm: String,
}

impl BenchRuntime {
    fn new(label: &str, binary: PathBuf) -> Self {
        let name = binary.file_name().map(|name| name.as_encoded_bytes().to_vec()).unwrap_or_default();
        let comm = String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned();
        Self { label: label.to_owned(), podman_name: label.to_owned(), binary, comm }
    }

    /// husk: a monitor and a VMM per container, whose own processes run in
    /// the guest, out of the host's accounting.
    fn in_vm(&self) -> bool {
        self.comm == "husk"
    }
}

fn bench_runtime(env: &Env, spec: &str) -> Result<BenchRuntime> {
    if spec.contains('/') {
        let binary = PathBuf::from(spec);
        ensure!(binary.is_file(), "--runtime {spec}: no such file");
        return Ok(BenchRuntime::new(spec, binary));
    }
    let runtime = Runtime::parse(spec)?;
    Ok(BenchRuntime::new(spec, env.binary(runtime)?))
}

/// One `BENCH` line per sample, as husk-bench reads them: `system`
/// measured on `group` (stats::Series::of's naming).
fn sample(group: &str, system: &str, value_ms: f64) {
    let name = format!("{group} ({system})");
    println!(
        "BENCH {}",
        serde_json::json!({ "name": name, "group": group, "system": system, "unit": "ms", "value": value_ms })
    );
}

/// A plain bundle running /bin/true in a copy of the busybox rootfs.
fn bench_bundle(env: &Env) -> Result<PathBuf> {
    let bundle = env.state.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let status = Command::new("cp").arg("-a").arg(&env.rootfs).arg(bundle.join("rootfs")).status()?;
    ensure!(status.success(), "copying {} into the bundle failed", env.rootfs.display());
    let mut spec = oci_spec::runtime::Spec::default();
    let process = spec.process_mut().as_mut().expect("the default spec has a process");
    process.set_args(Some(vec!["/bin/true".into()]));
    process.set_terminal(Some(false));
    spec.root_mut().as_mut().expect("the default spec has a root").set_path("rootfs".into());
    spec.save(bundle.join("config.json")).context("writing the bundle's config.json")?;
    Ok(bundle)
}

/// The two ways `bench` starts a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// `podman --runtime R run --rm IMAGE /bin/true`.
    Podman,
    /// `R run --bundle B id`: the runtime alone.
    Run,
}

impl Start {
    /// The group of the wall-time samples.
    fn group(self) -> &'static str {
        match self {
            Self::Podman => "podman run --rm /bin/true",
            Self::Run => "run --bundle /bin/true (create → exit → delete)",
        }
    }

    /// The group of the host CPU time `kind` of process spent.
    fn cpu_group(self, kind: &str) -> String {
        let start = match self {
            Self::Podman => "podman run --rm",
            Self::Run => "run --bundle",
        };
        format!("host CPU per container start, {start}: {kind}")
    }
}

/// The kinds of process `bench` charges CPU time to.
const KIND_PODMAN: &str = "podman";
const KIND_CONMON: &str = "conmon";
/// The runtime's binary: husk's CLI invocations, crun's and runc's
/// processes (runc's `runc:[…]` init stages too).
const KIND_RUNTIME: &str = "runtime CLI";
/// A husk process that is a husk-vmm's parent: the container's monitor.
const KIND_MONITOR: &str = "husk monitor";
/// husk-vmm, and the kernel threads KVM runs for its VM.
const KIND_VMM: &str = "husk-vmm";
/// A shared-kernel container's own process: the runtime's code in it
/// before it exec'd /bin/true, then /bin/true.
const KIND_CONTAINER: &str = "container process";
const KIND_OTHER: &str = "other";
const KIND_TOTAL: &str = "total";

/// A record's command name is that of the thread that exited last, which
/// for a multi-threaded process may be any thread's name: husk's threads
/// are named (runtime/src, vmm/src), so these lists name them all.
fn is_husk_vmm_thread(comm: &str) -> bool {
    matches!(comm, "husk-vmm" | "husk-api" | "husk-api-conn")
        || comm.strip_prefix("vcpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        // KVM's kernel threads for the VM (kvm-nx-lpage-recovery, kvm-pit/<pid>).
        || comm.starts_with("kvm-")
}

fn is_husk_runtime_thread(comm: &str) -> bool {
    matches!(comm, "signals" | "wait" | "vmm-wait") || comm.starts_with("pump-")
}

/// Host CPU time of one container start per kind of process, from the
/// accounting records of everything that ran: always the same kinds for
/// one runtime and way of starting (zero where none ran), then the total.
/// With husk, each start must show exactly one monitor and one VMM (a
/// thread name the lists above lack would hide them).
fn cpu_breakdown(runtime: &BenchRuntime, start: Start, records: &[Record]) -> Result<Vec<(&'static str, Duration)>> {
    let mut kinds = Vec::new();
    if start == Start::Podman {
        kinds.extend([KIND_PODMAN, KIND_CONMON]);
    }
    kinds.push(KIND_RUNTIME);
    if runtime.in_vm() {
        kinds.extend([KIND_MONITOR, KIND_VMM]);
    } else {
        kinds.push(KIND_CONTAINER);
    }
    kinds.push(KIND_OTHER);
    let by_comm = |record: &Record| {
        let comm = record.comm.as_str();
        match comm {
            "podman" => KIND_PODMAN,
            "conmon" => KIND_CONMON,
            "true" => KIND_CONTAINER,
            _ if comm == runtime.comm => KIND_RUNTIME,
            _ if runtime.comm == "runc" && comm.starts_with("runc:") => KIND_RUNTIME,
            _ if runtime.in_vm() && is_husk_vmm_thread(comm) => KIND_VMM,
            _ if runtime.in_vm() && is_husk_runtime_thread(comm) => KIND_RUNTIME,
            _ => KIND_OTHER,
        }
    };
    // The monitor waits for its VMM, so is still its parent when it exits
    // (KVM's threads are kthreadd's children).
    let vmm_parents: BTreeSet<u32> =
        records.iter().filter(|r| by_comm(r) == KIND_VMM && !r.comm.starts_with("kvm-")).map(|r| r.ppid).collect();
    let kind_of = |record: &Record| match by_comm(record) {
        KIND_RUNTIME if runtime.in_vm() && vmm_parents.contains(&record.pid) => KIND_MONITOR,
        // A kind this runtime should not have (a conmon in a plain run)
        // counts as other: every round reports the same kinds.
        kind if kinds.contains(&kind) => kind,
        _ => KIND_OTHER,
    };
    if runtime.in_vm() {
        let count = |kind: &str| {
            records.iter().filter(|r| kind_of(r) == kind && !(kind == KIND_VMM && r.comm.starts_with("kvm-"))).count()
        };
        ensure!(
            count(KIND_VMM) == 1 && count(KIND_MONITOR) == 1,
            "expected one husk-vmm and one husk monitor among the processes of a container start, found {} and {}:\n  {}",
            count(KIND_VMM),
            count(KIND_MONITOR),
            describe_records(records)
        );
    }
    let mut breakdown: Vec<(&'static str, Duration)> = kinds.iter().map(|&kind| (kind, Duration::ZERO)).collect();
    for record in records {
        let kind = kind_of(record);
        let entry = breakdown.iter_mut().find(|(k, _)| *k == kind).expect("every kind has an entry");
        entry.1 += record.cpu();
    }
    let total = records.iter().map(Record::cpu).sum();
    breakdown.push((KIND_TOTAL, total));
    Ok(breakdown)
}

/// Every process's record, one line each, for the log.
fn describe_records(records: &[Record]) -> String {
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| {
            let forked = if r.forked_without_exec() { ", forked" } else { "" };
            format!(
                "{} (pid {}, ppid {}{forked}): {} ms CPU in {:.0} ms",
                r.comm,
                r.pid,
                r.ppid,
                r.cpu().as_millis(),
                r.elapsed.as_secs_f64() * 1e3
            )
        })
        .collect();
    lines.sort();
    lines.join("\n  ")
}

/// How long what a command started (a daemonised conmon or monitor, a
/// VMM, podman's cleanup) may outlive it.
const LINGER: Duration = Duration::from_secs(60);

/// Runs `command` with process accounting on, and once it has ended, waits
/// until every process it started has ended too, so that the records hold
/// all the host CPU time the container's start cost. Accounting goes on
/// before the clock starts and off after the last process is gone: the
/// wall time is the command's alone.
fn measured(env: &Env, command: &mut Command) -> Result<(Output, Vec<Record>)> {
    // Kernel threads come and go on their own.
    let is_new =
        |p: &Process, before: &BTreeSet<(i32, u64)>| p.pid != 2 && p.ppid != 2 && !before.contains(&(p.pid, p.start));
    let before: BTreeSet<(i32, u64)> = processes().into_iter().map(|p| (p.pid, p.start)).collect();
    let path = env.state.join("bench.acct");
    let accounting = Accounting::start(&path).context("bench charges host CPU time with process accounting")?;
    let out = run(command, COMMAND_TIMEOUT)?.success()?;
    let deadline = Instant::now() + LINGER;
    loop {
        let left: Vec<Process> = processes().into_iter().filter(|p| is_new(p, &before)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let left: Vec<String> = left.iter().map(|p| format!("{} `{}`", p.pid, p.cmdline)).collect();
            bail!("{LINGER:?} after `{}` ended, processes it started still run:\n  {}", out.argv, left.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut records = accounting.finish().context("reading the process accounting records")?;
    // Turning accounting off writes a record for the caller: this suite.
    records.retain(|r| r.pid != std::process::id());
    Ok((out, records))
}

fn bench(env: &Env, runtimes: &[String], rounds: usize) -> Result<()> {
    ensure!(!runtimes.is_empty(), "bench needs at least one --runtime");
    let runtimes: Vec<BenchRuntime> = runtimes.iter().map(|r| bench_runtime(env, r)).collect::<Result<_>>()?;
    let bundle = bench_bundle(env)?;
    with_podman(env, &runtimes[0].podman_name, |podman| {
        let mut medians: Vec<(String, Vec<f64>)> = Vec::new();
        let mut record = |group: &str, system: &str, value: f64| {
            sample(group, system, value);
            let name = format!("{group} ({system})");
            match medians.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => medians.push((name, vec![value])),
            }
        };
        for round in 1..=rounds {
            eprintln!("bench: round {round}/{rounds}");
            for (index, runtime) in runtimes.iter().enumerate() {
                let mut podman_run = podman.command();
                podman_run.args(["--runtime", &runtime.podman_name, "run", "--rm", IMAGE, "/bin/true"]);
                let mut plain_run = Command::new(&runtime.binary);
                plain_run.args(["run", "--bundle"]).arg(&bundle).arg(format!("hes-bench-{round}-{index}"));
                for (start, command) in [(Start::Podman, &mut podman_run), (Start::Run, &mut plain_run)] {
                    let (out, records) = measured(env, command)?;
                    record(start.group(), &runtime.label, out.elapsed.as_secs_f64() * 1e3);
                    let breakdown = cpu_breakdown(runtime, start, &records)?;
                    for &(kind, cpu) in &breakdown {
                        record(&start.cpu_group(kind), &runtime.label, cpu.as_secs_f64() * 1e3);
                    }
                    if round == 1 {
                        eprintln!("bench: `{}`: processes and their CPU:\n  {}", out.argv, describe_records(&records));
                    }
                    if breakdown.iter().any(|&(kind, cpu)| kind == KIND_OTHER && !cpu.is_zero()) {
                        eprintln!(
                            "bench: `{}` ran processes of no known kind (\"other\"); all its processes:\n  {}",
                            out.argv,
                            describe_records(&records)
                        );
                    }
                }
            }
        }
        for (name, mut values) in medians {
            values.sort_by(f64::total_cmp);
            eprintln!("bench: {name}: median {:.0} ms of {}", values[values.len() / 2], values.len());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------

fn check_runtime(cli: &Cli) -> Result<Runtime> {
    match cli.runtimes.as_slice() {
        [one] => Runtime::parse(one),
        other => bail!("the checks take exactly one --runtime (husk, crun or runc), got {other:?}"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let env = Env::open(&cli)?;
    let result = match cli.suite {
        Suite::Podman | Suite::Containerd | Suite::All => check_runtime(&cli).and_then(|runtime| {
            env.binary(runtime)?;
            eprintln!("husk-engine-suite: runtime {}", runtime.name());
            if matches!(cli.suite, Suite::Podman | Suite::All) {
                with_podman(&env, runtime.name(), |podman| podman_checks(podman, runtime))?;
            }
            if matches!(cli.suite, Suite::Containerd | Suite::All) {
                with_containerd(&env, |containerd| containerd_checks(containerd, runtime))?;
            }
            Ok(())
        }),
        Suite::Bench { rounds } => bench(&env, &cli.runtimes, rounds),
        Suite::Demo => demo(&env),
        Suite::Density { husk_count, crun_count, budget_mib } => {
            density::density(&env, husk_count, crun_count, budget_mib)
        }
    };
    let cleared = env.clear_state();
    eprintln!("husk-engine-suite: {:.1} s", started.elapsed().as_secs_f64());
    result?;
    cleared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/run/a\\040b/c"), PathBuf::from("/run/a b/c"));
        assert_eq!(unescape_mountinfo("/x\\134y\\011"), PathBuf::from("/x\\y\t"));
        assert_eq!(unescape_mountinfo("/plain\\9"), PathBuf::from("/plain\\9"));
    }

    #[test]
    fn memtotal_is_read_in_kib() {
        let meminfo = "MemTotal:         131072 kB\nMemFree:           1000 kB\n";
        assert_eq!(meminfo_total_kib(meminfo), Some(131072));
        assert_eq!(meminfo_total_kib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let mut command = Command::new("podman");
        command.args(["run", "-e", "GREETING=hello env", "it's"]);
        assert_eq!(command_line(&command), r#"podman run -e 'GREETING=hello env' 'it'\''s'"#);
    }

    fn record(comm: &str, pid: u32, ppid: u32, cpu_ms: u64) -> Record {
        Record {
            comm: comm.into(),
            pid,
            ppid,
            uid: 0,
            gid: 0,
            flags: 0,
            exit_status: 0,
            user: Duration::from_millis(cpu_ms / 2),
            system: Duration::from_millis(cpu_ms - cpu_ms / 2),
            elapsed: Duration::from_secs(1),
            started_at: 0,
        }
    }

    #[test]
    fn host_cpu_is_charged_per_kind_of_process() {
        let husk = BenchRuntime::new("husk", PathBuf::from("/repo/target/release/husk"));
        let mut records = vec![
            record("podman", 100, 50, 900),
            record("conmon", 101, 100, 10),
            record("conmon", 102, 1, 30),
            record("husk", 103, 102, 200), // create
            // The VMM and its monitor, each named after the thread that
            // exited last; KVM's kernel thread for the VM.
            record("vcpu0", 105, 104, 4000),
            record("kvm-pit/105", 110, 2, 10),
            record("vmm-wait", 104, 102, 600),
            record("husk", 106, 100, 100),   // delete
            record("podman", 107, 102, 500), // conmon's cleanup
            record("iptables", 108, 100, 20),
        ];
        let ms = |breakdown: Vec<(&'static str, Duration)>| -> Vec<(&'static str, u128)> {
            breakdown.into_iter().map(|(kind, cpu)| (kind, cpu.as_millis())).collect()
        };
        assert_eq!(
            ms(cpu_breakdown(&husk, Start::Podman, &records).unwrap()),
            [
                (KIND_PODMAN, 1400),
                (KIND_CONMON, 40),
                (KIND_RUNTIME, 300),
                (KIND_MONITOR, 600),
                (KIND_VMM, 4010),
                (KIND_OTHER, 20),
                (KIND_TOTAL, 6370)
            ]
        );
        // A VMM under a thread name nobody listed: no VMM and no monitor,
        // which is an error rather than CPU silently moved to "other".
        records[4].comm = "io-thread".into();
        let err = cpu_breakdown(&husk, Start::Podman, &records).unwrap_err().to_string();
        assert!(err.contains("found 0 and 0") && err.contains("io-thread (pid 105"), "{err}");

        // runc's init stages are runc's; the container's own process has
        // the kinds crun and runc have, also when nothing of a kind ran.
        let runc = BenchRuntime::new("runc", PathBuf::from("/usr/sbin/runc"));
        let records = [record("runc", 200, 50, 30), record("runc:[1:CHILD]", 201, 200, 10), record("true", 202, 1, 0)];
        assert_eq!(
            ms(cpu_breakdown(&runc, Start::Run, &records).unwrap()),
            [(KIND_RUNTIME, 40), (KIND_CONTAINER, 0), (KIND_OTHER, 0), (KIND_TOTAL, 40)]
        );

        // husk's names mean nothing beside crun: other.
        let crun = BenchRuntime::new("crun", PathBuf::from("/usr/bin/crun"));
        let kinds = cpu_breakdown(&crun, Start::Run, &[record("husk-vmm", 1, 1, 10)]).unwrap();
        assert_eq!(kinds.iter().find(|(k, _)| *k == KIND_OTHER).unwrap().1, Duration::from_millis(10));
    }

    #[test]
    fn bench_lines_carry_group_and_system() {
        assert_eq!(Start::Podman.group(), "podman run --rm /bin/true");
        assert_eq!(Start::Run.cpu_group(KIND_VMM), "host CPU per container start, run --bundle: husk-vmm");
        let long = BenchRuntime::new("/x/y", PathBuf::from("/x/a-runtime-with-a-long-name"));
        assert_eq!(long.comm, "a-runtime-with-");
        assert!(!long.in_vm());
    }

    #[test]
    fn only_known_runtimes_are_checked() {
        assert_eq!(Runtime::parse("husk").unwrap(), Runtime::Husk);
        assert!(Runtime::parse("youki").is_err());
        assert!(Runtime::Husk.in_vm() && !Runtime::Crun.in_vm() && !Runtime::Runc.in_vm());
    }
}
