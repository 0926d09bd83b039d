//! The runc-compatible commands.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Subcommand;
use husk_runtime::agent_client::AgentClient;
use husk_runtime::container_state::{
    self, ContainerDir, ContainerRecord, HostProcess, OciState, Phase, StateError, Status, VmRecord,
};
use husk_runtime::monitor::{self, ExecLaunch, InitLaunch, Report};
use husk_runtime::{host_cgroup, network, shares};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::logging;
use crate::Cli;

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Create a container: boot its microVM and create the container in it.
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or to all of
    /// its processes with --all.
    Kill {
        id: String,
        signal: Option<String>,
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Delete a container: its VM, state and everything made for it.
    Delete {
        id: String,
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the host processes that stand for a container's processes.
    Ps {
        id: String,
        #[arg(short = 'f', long, default_value = "table")]
        format: ListFormat,
        /// Accepted for runc compatibility (ps options); ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: ListFormat,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Freeze a container's processes.
    Pause { id: String },
    /// Thaw a paused container's processes.
    Resume { id: String },
    /// Change a running container's resource limits (in its VM's cgroup).
    Update(UpdateArgs),
    /// Print the features this runtime supports (OCI runtime features JSON).
    Features,
    /// Write a default config.json into the bundle.
    /// (`--rootless` makes a spec for a rootless container.)
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Internal: a container's monitor (started by create).
    #[command(name = "__monitor-init", hide = true)]
    MonitorInit { id: String },
    /// Internal: an exec'd process's monitor (started by exec --detach).
    #[command(name = "__monitor-exec", hide = true)]
    MonitorExec { id: String, exec_id: String },
}

#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_pivot: bool,
    #[arg(long)]
    pub no_new_keyring: bool,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// A JSON file holding the OCI process to run.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// uid[:gid]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    #[arg(short = 'c', long = "cap")]
    pub caps: Vec<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for runc compatibility (host LSM labels mean nothing in
    /// the guest).
    #[arg(long)]
    pub process_label: Option<String>,
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpdateArgs {
    /// A JSON file of OCI linux resources, or - for stdin.
    #[arg(short = 'r', long)]
    pub resources: Option<PathBuf>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn version_text() -> String {
    format!(
        "husk version {}\nspec: {}\nvmm: husk-vmm (KVM microVM per container)\n",
        env!("CARGO_PKG_VERSION"),
        OCI_SPEC_VERSION
    )
}

/// The runtime-spec version `--version` names, as runc's does.
const OCI_SPEC_VERSION: &str = "1.0.2-dev";

pub fn run(cli: &Cli, command: Command) -> Result<u8> {
    match command {
        Command::Create(args) => create(cli, &args).map(|_| 0),
        Command::Start { id } => start(cli, &id).map(|()| 0),
        Command::Run { create: args, detach } => run_container(cli, &args, detach),
        Command::State { id } => state(cli, &id).map(|()| 0),
        Command::Kill { id, signal, all } => kill(cli, &id, signal.as_deref(), all).map(|()| 0),
        Command::Delete { id, force } => delete(cli, &id, force).map(|()| 0),
        Command::Exec(args) => exec(cli, &args),
        Command::Ps { id, format, .. } => ps(cli, &id, format).map(|()| 0),
        Command::List { format, quiet } => list(cli, format, quiet).map(|()| 0),
        Command::Pause { id } => set_paused(cli, &id, true).map(|()| 0),
        Command::Resume { id } => set_paused(cli, &id, false).map(|()| 0),
        Command::Update(args) => update(cli, &args).map(|()| 0),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&husk_runtime::features::features())?);
            Ok(0)
        }
        Command::Spec { bundle } => {
            let rootless = matches!(cli.rootless.as_deref(), Some("true" | "1"));
            write_spec(&bundle, rootless).map(|()| 0)
        }
        Command::MonitorInit { id } => Ok(monitor_init(cli, &id)),
        Command::MonitorExec { id, exec_id } => Ok(monitor_exec(cli, &id, &exec_id)),
    }
}

fn container(cli: &Cli, id: &str) -> Result<ContainerDir> {
    Ok(ContainerDir::new(&cli.root, id)?)
}

/// The container's record and lock; a directory left by a `create` that
/// crashed before recording anything reads as not found.
fn locked(cli: &Cli, id: &str) -> Result<(ContainerDir, container_state::Lock, ContainerRecord)> {
    let dir = container(cli, id)?;
    let lock = dir.lock()?;
    let record = dir.load()?;
    Ok((dir, lock, record))
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    container_state::write_atomically(path, pid.to_string().as_bytes()).context("writing the pid file")
}

/// A pipe whose write end becomes fd 3 of a monitor.
fn report_pipe() -> Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("making the monitor's report pipe");
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `husk <args>` as a monitor: our stdio, the report pipe as fd 3,
/// no other descriptor (an engine's sync pipes must not be held open).
fn spawn_monitor(cli: &Cli, args: &[&str]) -> Result<(std::process::Child, File)> {
    let (read, write) = report_pipe()?;
    let exe = std::env::current_exe().context("finding the husk binary")?;
    let mut command = std::process::Command::new(exe);
    command.arg("--root").arg(&cli.root);
    if let Some(log) = &cli.log {
        command.arg("--log").arg(log);
    }
    command.arg("--log-format").arg(match cli.log_format {
        logging::Format::Text => "text",
        logging::Format::Json => "json",
    });
    if cli.debug {
        command.arg("--debug");
    }
    command.args(args).stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let write_fd = write.as_raw_fd();
    // SAFETY: dup2 and close_range are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(write_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = command.spawn().context("starting the monitor")?;
    drop(write);
    Ok((child, read))
}

/// Takes fd 3 (the report pipe) and keeps it from any child.
fn take_report_fd() -> File {
    // SAFETY: fd 3 was set up by spawn_monitor; marking it close-on-exec
    // so the VMM does not inherit it, then owning it.
    unsafe {
        libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC);
        File::from_raw_fd(3)
    }
}

/// A monitor's start-up: its report pipe, the signals it handles blocked,
/// and the launch request `file` its starter left in the container's
/// directory. On failure the error has been reported already.
fn monitor_start<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    id: &str,
    file: &str,
) -> Result<(File, libc::sigset_t, ContainerDir, T), ()> {
    let report = take_report_fd();
    let signals = monitor::block_signals();
    let loaded = container(cli, id).and_then(|dir| {
        let bytes = std::fs::read(dir.file(file)).with_context(|| format!("reading the launch request {file}"))?;
        let request = serde_json::from_slice(&bytes).with_context(|| format!("decoding the launch request {file}"))?;
        Ok((dir, request))
    });
    match loaded {
        Ok((dir, request)) => Ok((report, signals, dir, request)),
        Err(err) => {
            monitor::send_report::<()>(report, &Report::Error(format!("{err:#}")));
            Err(())
        }
    }
}

/// The bundle's `config.json`, checked for what `create` needs before
/// anything is made for the container: a spec husk can run, so that a bad
/// bundle fails here, with a message naming the problem, rather than in the
/// monitor after a VM was booted for it.
fn load_bundle_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: Spec =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not an OCI runtime spec", path.display()))?;
    check_spec(&spec).with_context(|| format!("{} cannot be run", path.display()))?;
    Ok(spec)
}

/// The checks of [`load_bundle_spec`], runc's where runc has them.
fn check_spec(spec: &Spec) -> Result<()> {
    let version = spec.version();
    ensure!(!version.is_empty(), "ociVersion is missing");
    let major = version.split(['.', '-', '+']).next().unwrap_or_default();
    ensure!(
        !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) && version.contains('.'),
        "ociVersion {version:?} is not a SemVer version"
    );
    ensure!(major == "1", "ociVersion {version:?} is not supported: husk runs runtime-spec 1.x bundles");
    let root = spec.root().as_ref().ok_or_else(|| anyhow!("root is missing"))?;
    ensure!(!root.path().as_os_str().is_empty(), "root.path is empty");
    // A relative root is the bundle's: one whose `..` climbs out of the
    // bundle names some other directory of the host.
    if root.path().is_relative() {
        let mut depth = 0i32;
        for component in root.path().components() {
            match component {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            ensure!(depth >= 0, "root.path {} leaves the bundle", root.path().display());
        }
    }
    let process = spec.process().as_ref().ok_or_else(|| anyhow!("process is missing"))?;
    ensure!(process.args().as_ref().is_some_and(|args| !args.is_empty()), "process.args must not be empty");
    ensure!(process.cwd().is_absolute(), "process.cwd {} is not an absolute path", process.cwd().display());
    Ok(())
}

fn create(cli: &Cli, args: &CreateArgs) -> Result<std::process::Child> {
    let dir = container(cli, &args.id)?;
    let bundle = std::fs::canonicalize(&args.bundle)
        .with_context(|| format!("the bundle {} does not exist", args.bundle.display()))?;
    ensure!(bundle.is_dir(), "the bundle {} is not a directory", bundle.display());
    let spec = load_bundle_spec(&bundle)?;
    shares::rootfs_path(&spec, &bundle)?;
    let lock = dir.create()?;
    let undo = |dir: &ContainerDir| {
        let _ = dir.remove();
    };
    let request = InitLaunch {
        id: args.id.clone(),
        bundle: bundle.clone(),
        console_socket: args.console_socket.clone(),
        debug: cli.debug,
    };
    if let Err(err) = container_state::write_atomically(&dir.file("launch.json"), &serde_json::to_vec(&request)?) {
        undo(&dir);
        return Err(err.into());
    }
    let (mut child, report) = match spawn_monitor(cli, &["__monitor-init", &args.id]) {
        Ok(spawned) => spawned,
        Err(err) => {
            undo(&dir);
            return Err(err);
        }
    };
    let launched = match monitor::read_report::<VmRecord>(report) {
        Some(Report::Ok(launched)) => launched,
        Some(Report::Error(message)) => {
            let _ = child.wait();
            undo(&dir);
            bail!("creating container {}: {message}", args.id);
        }
        None => {
            let _ = child.kill();
            let status = child.wait();
            undo(&dir);
            bail!("creating container {}: its monitor died without a report ({status:?})", args.id);
        }
    };
    let monitor = HostProcess::of(child.id() as i32).ok_or_else(|| anyhow!("the monitor exited after creating"))?;
    let record = ContainerRecord {
        id: args.id.clone(),
        bundle,
        created: container_state::now_rfc3339(),
        annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        phase: Phase::Created,
        monitor,
        vm: launched,
    };
    dir.save(&record)?;
    let _ = std::fs::remove_file(dir.file("launch.json"));
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file, monitor.pid)?;
    }
    logging::debug(&format!(
        "created {} (monitor {}, husk-vmm {}, {} vCPUs, {} MiB)",
        args.id, monitor.pid, record.vm.vmm.pid, record.vm.vcpus, record.vm.mem_mib
    ));
    drop(lock);
    Ok(child)
}

fn monitor_init(cli: &Cli, id: &str) -> u8 {
    let Ok((report, signals, dir, request)) = monitor_start::<InitLaunch>(cli, id, "launch.json") else { return 1 };
    let code = monitor::run_init(dir.clone(), request, report, signals) as u8;
    if let Some(reason) = dir.exit().and_then(|exit| exit.vm_lost) {
        logging::warn(&format!("container {id}: its microVM ended under it, reported as killed (137): {reason}"));
    }
    code
}

fn start(cli: &Cli, id: &str) -> Result<()> {
    let (dir, _lock, mut record) = locked(cli, id)?;
    match dir.status(&record) {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        status => bail!("cannot start an already {status} container"),
    }
    AgentClient::new(dir.file("vsock.sock")).start(id).with_context(|| format!("starting {id}"))?;
    record.phase = Phase::Running;
    dir.save(&record)?;
    Ok(())
}

fn run_container(cli: &Cli, args: &CreateArgs, detach: bool) -> Result<u8> {
    // Signals for the container go through the monitor, which is in its
    // own session: forward what this process receives.
    let signals = monitor::block_signals();
    let mut child = create(cli, args)?;
    if let Err(err) = start(cli, &args.id) {
        let _ = delete(cli, &args.id, true);
        return Err(err);
    }
    if detach {
        return Ok(0);
    }
    let pid = child.id() as libc::pid_t;
    std::thread::spawn(move || loop {
        // SAFETY: waiting on a blocked, initialised set.
        let signal = unsafe { libc::sigwaitinfo(&signals, std::ptr::null_mut()) };
        if signal > 0 {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(pid, signal) };
        }
    });
    let status = child.wait().context("waiting for the container")?;
    let code = status.code().unwrap_or(137) as u8;
    delete(cli, &args.id, true)?;
    Ok(code)
}

fn state(cli: &Cli, id: &str) -> Result<()> {
    let dir = container(cli, id)?;
    let record = dir.load()?;
    let status = dir.status(&record);
    let state = OciState::of(&record, status);
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

/// A signal by number or name (`9`, `KILL`, `SIGKILL`, `sigkill`).
pub fn parse_signal(text: &str) -> Result<i32> {
    if let Ok(number) = text.parse::<i32>() {
        ensure!((1..=64).contains(&number), "invalid signal {number}");
        return Ok(number);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("POLL", libc::SIGPOLL),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    if let Some(&(_, number)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Ok(number);
    }
    // SIGRTMIN+N / SIGRTMAX-N as runc accepts them (glibc: 34..64).
    // The offset is unsigned: `RTMIN+-3` is not SIGRTMIN-3.
    if let Some(offset) = name.strip_prefix("RTMIN+").and_then(|n| n.parse::<u8>().ok()) {
        let number = 34 + i32::from(offset);
        ensure!(number <= 64, "invalid signal {text}: past SIGRTMAX");
        return Ok(number);
    }
    if let Some(offset) = name.strip_prefix("RTMAX-").and_then(|n| n.parse::<u8>().ok()) {
        let number = 64 - i32::from(offset);
        ensure!(number >= 34, "invalid signal {text}: before SIGRTMIN");
        return Ok(number);
    }
    bail!("unknown signal {text:?}")
}

fn kill(cli: &Cli, id: &str, signal: Option<&str>, all: bool) -> Result<()> {
    let signal = parse_signal(signal.unwrap_or("SIGTERM"))?;
    let dir = container(cli, id)?;
    let record = dir.load()?;
    if dir.status(&record) == Status::Stopped {
        // runc's words: containerd's shim reads "container not running" in
        // the log as "already finished", which a kill racing the exit is.
        bail!("{id}: container not running");
    }
    AgentClient::new(dir.file("vsock.sock"))
        .signal(id, None, signal, all)
        .with_context(|| format!("sending signal {signal} to {id}"))?;
    Ok(())
}

/// Stops whatever still runs of a container and removes everything made
/// for it: VM, monitors, TAP and tc rules, staged volume mounts, the host
/// cgroup and the state directory.
fn destroy(dir: &ContainerDir, record: Option<&ContainerRecord>) -> Result<()> {
    if let Some(record) = record {
        let mut processes = vec![record.monitor, record.vm.vmm];
        processes.extend(monitor::live_exec_monitors(dir));
        for process in &processes {
            if process.is_alive() {
                // SAFETY: kill of a pid we verified by its start time.
                unsafe { libc::kill(process.pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes.iter().any(HostProcess::is_alive) {
            ensure!(Instant::now() < deadline, "the container's processes survived SIGKILL for 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let (Some(netns), Some(tap)) = (&record.vm.netns, &record.vm.tap) {
            // The engine may have removed the namespace (and the TAP in it)
            // already.
            if netns.exists() {
                if let Err(err) = network::teardown(netns, tap) {
                    logging::warn(&format!("removing {tap} from {}: {err}", netns.display()));
                }
            }
        }
        shares::unstage(&record.vm.volumes);
        if let Some(path) = &record.vm.cgroups_path {
            if let Err(err) = host_cgroup::remove(path, &record.id) {
                logging::warn(&format!("removing the host cgroup {path}: {err}"));
            }
        }
    }
    dir.remove()?;
    Ok(())
}

fn delete(cli: &Cli, id: &str, force: bool) -> Result<()> {
    let dir = container(cli, id)?;
    let _lock = dir.lock()?;
    let record = match dir.load() {
        Ok(record) => record,
        // A create that died before recording: nothing runs; clear it.
        Err(StateError::NotFound(_)) if dir.path.exists() => return destroy(&dir, None),
        Err(err) => return Err(err.into()),
    };
    match dir.status(&record) {
        Status::Stopped | Status::Created => {}
        status if force => logging::debug(&format!("force-deleting {status} container {id}")),
        status => bail!("cannot delete container {id} that is not stopped: {status}"),
    }
    destroy(&dir, Some(&record))
}

fn exec_process(args: &ExecArgs, record: &ContainerRecord) -> Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_slice(&text).with_context(|| format!("{} is not an OCI process", path.display()));
    }
    ensure!(!args.command.is_empty(), "exec needs a command or --process");
    // The options first: a bad one is the caller's mistake whatever the bundle holds.
    let user = match &args.user {
        Some(user) => {
            let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
            let uid: u32 = uid.parse().with_context(|| format!("invalid uid in --user {user:?}"))?;
            let gid: u32 = gid.parse().with_context(|| format!("invalid gid in --user {user:?}"))?;
            Some((uid, gid))
        }
        None => None,
    };
    let path = record.bundle.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading the bundle's {}", path.display()))?;
    let spec: Spec =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not an OCI runtime spec", path.display()))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.into());
    }
    if !args.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(args.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some((uid, gid)) = user {
        let mut spec_user = process.user().clone();
        spec_user.set_uid(uid);
        spec_user.set_gid(gid);
        if !args.additional_gids.is_empty() {
            spec_user.set_additional_gids(Some(args.additional_gids.clone()));
        }
        process.set_user(spec_user);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.caps.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let extra: std::collections::HashSet<oci_spec::runtime::Capability> = args
            .caps
            .iter()
            .map(|c| c.parse().map_err(|_| anyhow!("unknown capability {c}")))
            .collect::<Result<_>>()?;
        let add = |set: &Option<std::collections::HashSet<oci_spec::runtime::Capability>>| {
            Some(set.clone().unwrap_or_default().union(&extra).cloned().collect())
        };
        caps.set_bounding(add(caps.bounding()));
        caps.set_effective(add(caps.effective()));
        caps.set_permitted(add(caps.permitted()));
        process.set_capabilities(Some(caps));
    }
    Ok(process)
}

fn exec(cli: &Cli, args: &ExecArgs) -> Result<u8> {
    let dir = container(cli, &args.id)?;
    let record = dir.load()?;
    match dir.status(&record) {
        Status::Running | Status::Created => {}
        status => bail!("cannot exec in a {status} container"),
    }
    let mut process = exec_process(args, &record)?;
    if args.tty {
        process.set_terminal(Some(true));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let exec_id = format!("exec-{:x}-{}", nanos, std::process::id());
    let request = ExecLaunch {
        id: args.id.clone(),
        exec_id: exec_id.clone(),
        process,
        console_socket: args.console_socket.clone(),
    };
    if !args.detach {
        let signals = monitor::block_signals();
        return Ok(monitor::run_exec(&dir, request, None, signals) as u8);
    }
    let launch = dir.file(&format!("launch-{exec_id}.json"));
    container_state::write_atomically(&launch, &serde_json::to_vec(&request)?)?;
    let spawned = spawn_monitor(cli, &["__monitor-exec", &args.id, &exec_id]);
    let (mut child, report) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            let _ = std::fs::remove_file(&launch);
            return Err(err);
        }
    };
    let outcome = monitor::read_report::<()>(report);
    let _ = std::fs::remove_file(&launch);
    match outcome {
        Some(Report::Ok(())) => {}
        Some(Report::Error(message)) => {
            let _ = child.wait();
            bail!("{message}");
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("exec in {}: its monitor died without a report", args.id);
        }
    }
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file, child.id() as i32)?;
    }
    Ok(0)
}

fn monitor_exec(cli: &Cli, id: &str, exec_id: &str) -> u8 {
    let Ok((report, signals, dir, request)) = monitor_start::<ExecLaunch>(cli, id, &format!("launch-{exec_id}.json"))
    else {
        return 255;
    };
    monitor::run_exec(&dir, request, Some(report), signals) as u8
}

fn ps(cli: &Cli, id: &str, format: ListFormat) -> Result<()> {
    let dir = container(cli, id)?;
    let record = dir.load()?;
    let mut pids: Vec<i32> = Vec::new();
    if dir.status(&record) != Status::Stopped {
        pids.push(record.monitor.pid);
        pids.extend(monitor::live_exec_monitors(&dir).iter().map(|p| p.pid));
    }
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
        ListFormat::Table => {
            println!("PID\tCMD");
            for pid in pids {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim().to_owned())
                    .unwrap_or_default();
                println!("{pid}\t{cmd}");
            }
        }
    }
    Ok(())
}

fn list(cli: &Cli, format: ListFormat, quiet: bool) -> Result<()> {
    let mut states = Vec::new();
    for dir in container_state::list(&cli.root)? {
        let Ok(record) = dir.load() else { continue };
        let status = dir.status(&record);
        states.push(OciState::of(&record, status));
    }
    if quiet {
        for state in &states {
            println!("{}", state.id);
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string(&states)?),
        ListFormat::Table => {
            println!("{:<20} {:<8} {:<10} {:<40} {:<32} OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
            for s in &states {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32} {}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    if s.owner.is_empty() { "root" } else { &s.owner }
                );
            }
        }
    }
    Ok(())
}

fn set_paused(cli: &Cli, id: &str, paused: bool) -> Result<()> {
    let (dir, _lock, mut record) = locked(cli, id)?;
    let status = dir.status(&record);
    match (status, paused) {
        (Status::Running, true) | (Status::Paused, false) => {}
        (status, true) => bail!("cannot pause a {status} container"),
        (status, false) => bail!("cannot resume a {status} container"),
    }
    AgentClient::new(dir.file("vsock.sock"))
        .freeze(id, paused)
        .with_context(|| format!("{} {id}", if paused { "pausing" } else { "resuming" }))?;
    record.phase = if paused { Phase::Paused } else { Phase::Running };
    dir.save(&record)?;
    Ok(())
}

/// Bytes from runc's memory syntax: a number with an optional k/m/g suffix.
fn parse_memory(text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    if lower == "-1" {
        return Ok(-1);
    }
    let trimmed = lower.trim_end_matches('b');
    let (digits, scale) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1i64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    let value: i64 = digits.parse().with_context(|| format!("invalid memory size {text:?}"))?;
    value.checked_mul(scale).ok_or_else(|| anyhow!("memory size {text:?} is too large"))
}

fn update(cli: &Cli, args: &UpdateArgs) -> Result<()> {
    let (dir, _lock, record) = locked(cli, &args.id)?;
    let mut resources: LinuxResources = match &args.resources {
        Some(path) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            serde_json::from_str(&text).context("the resources on stdin are not OCI linux resources")?
        }
        Some(path) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                .with_context(|| format!("{} is not OCI linux resources", path.display()))?
        }
        None => LinuxResources::default(),
    };
    if let Some(memory) = &args.memory {
        let mut mem = (*resources.memory()).unwrap_or_default();
        mem.set_limit(Some(parse_memory(memory)?));
        resources.set_memory(Some(mem));
    }
    if args.cpu_quota.is_some() || args.cpu_period.is_some() {
        let mut cpu = resources.cpu().clone().unwrap_or_default();
        if let Some(quota) = args.cpu_quota {
            cpu.set_quota(Some(quota));
        }
        if let Some(period) = args.cpu_period {
            cpu.set_period(Some(period));
        }
        resources.set_cpu(Some(cpu));
    }
    if let Some(pids) = args.pids_limit {
        resources
            .set_pids(Some(oci_spec::runtime::LinuxPidsBuilder::default().limit(pids).build().expect("a pids limit")));
    }
    if let Some(limit) = resources.memory().as_ref().and_then(|m| m.limit()) {
        let vm_bytes = i64::from(record.vm.mem_mib) << 20;
        if limit > vm_bytes {
            logging::warn(&format!(
                "memory limit {limit} exceeds the VM's {} MiB: the VM's size stays the bound",
                record.vm.mem_mib
            ));
        }
    }
    match dir.status(&record) {
        Status::Stopped => bail!("{}: container not running", args.id),
        _ => AgentClient::new(dir.file("vsock.sock"))
            .update(&args.id, resources)
            .with_context(|| format!("updating {}", args.id))?,
    }
    Ok(())
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    ensure!(!path.exists(), "File {} exists. Remove it first", path.display());
    let spec = husk_runtime::spec_template::default_spec(rootless);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn engine_command_lines_parse() {
        use clap::Parser;
        for argv in [
            "husk --log-format=json --log /x/oci-log create --bundle /b --pid-file /b/pidfile --console-socket /tmp/s id1",
            "husk --root /run/containerd/runc/default --log /b/log.json --log-format json start id1",
            "husk kill id1 9",
            "husk delete --force id1",
            "husk exec --pid-file /p --process /q --detach --tty --console-socket /s id1",
            "husk exec -e A=1 --cwd /tmp id1 sh -c true",
            "husk ps --format json id1",
            "husk update --resources=/var/tmp/r id1",
            "husk --systemd-cgroup --rootless=false list -q",
            "husk --rootless spec -b /tmp",
        ] {
            let words: Vec<&str> = argv.split(' ').collect();
            crate::Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{argv}: {e}"));
        }
    }

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("RTMIN+2").unwrap(), 36);
        assert_eq!(parse_signal("SIGRTMAX-0").unwrap(), 64);
        for bad in ["0", "-9", "65", "NOPE", "", "SIG", "RTMIN+31", "RTMIN+-3", "RTMAX--1", "RTMAX-31", "9x"] {
            assert!(parse_signal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("128m").unwrap(), 128 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert_eq!(parse_memory("-1").unwrap(), -1);
        assert!(parse_memory("lots").is_err());
    }
}
