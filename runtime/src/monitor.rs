//! The host process that stands for a container's process.
//!
//! Engines expect the pid in `--pid-file` to be a host process that lives
//! exactly as long as the container's init and exits with its status
//! (conmon and the containerd shim are subreapers and read that status).
//! With the init inside a VM, that process is a monitor: `create` starts
//! it, and it boots the VM, has the agent create the container, joins the
//! stdio it inherited (or a pty) to the agent's streams, forwards the
//! signals it receives, and when the init exits tears the VM down and
//! exits with the init's status. `exec --detach` starts one per process.
//!
//! The VMM is the monitor's child with a parent-death signal: a monitor
//! killed with SIGKILL takes its VM with it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_api::agent_protocol::{
    CreateContainer, ExecProcess, ExitStatus, RootfsShare, StdioConfig, StdioStream, VolumeShare,
};
use husk_api::devices::VsockConfig;
use husk_api::vmm::BootSourceConfig;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::agent_client::{AgentClient, ClientError};
use crate::assets::Assets;
use crate::container_state::{ContainerDir, ExitRecord, HostProcess, StagedVolume, VmRecord};
use crate::stdio::{self, HostPty};
use crate::{host_cgroup, network, shares, sizing, vmm_client};

/// The guest's command line: the console quiet (every console byte is a
/// trapped port write), no watchdogs (a loaded host stalls vCPUs), and an
/// i8042 reset as the end of the VM.
pub const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet nowatchdog nosoftlockup";
/// How long a VM may take from InstanceStart to its agent's answer. Long,
/// for nested and emulated hosts; a VM that dies fails sooner.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest's vsock CID (each VM has its own vsock socket; the CID is
/// only seen inside).
const GUEST_CID: u64 = 3;
/// After the init exits, how long its output may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest gets to power off before its VMM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Signals a monitor passes on to its process, as a shim does.
const FORWARDED: &[i32] =
    &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT];

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("reading the bundle's config.json ({path}): {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error(transparent)]
    Assets(#[from] crate::assets::MissingAsset),
    #[error(transparent)]
    Sizing(#[from] sizing::SizingError),
    #[error(transparent)]
    Shares(#[from] shares::ShareError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Cgroup(#[from] host_cgroup::CgroupError),
    #[error(transparent)]
    Stdio(#[from] stdio::StdioError),
    #[error("starting husk-vmm {path}: {source}")]
    SpawnVmm { path: PathBuf, source: io::Error },
    #[error("configuring the VM through husk-vmm's API: {source}{log}")]
    Vmm { source: vmm_client::VmmApiError, log: String },
    #[error("the VM's agent: {source}{log}")]
    Agent { source: ClientError, log: String },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("annotation {JAIL_ANNOTATION}={0:?}: must be \"true\" or \"false\"")]
    JailAnnotation(String),
    #[error("preparing the VMM's jail at {path}: {source}")]
    Jail { path: PathBuf, source: io::Error },
}

/// The annotation that runs the VMM without its jail: `husk.jail=false`
/// (for debugging; the default is `true`).
pub const JAIL_ANNOTATION: &str = "husk.jail";

/// Open descriptors virtio-fs may hold per share: FsLimits' defaults in
/// husk-vmm (vmm/src/devices/virtio/fs/share.rs), 2^18 inodes and 2^14
/// handles. With [`VMM_BASE_FILES`] the VMM's RLIMIT_NOFILE is above
/// husk-vmm's `fs::fd_budget(shares)`, so every share gets those defaults
/// (with less, husk-vmm shrinks them).
const FS_FILES_PER_SHARE: u64 = (1 << 18) + (1 << 14);
/// Descriptors the VMM needs besides its shares' inodes and handles: KVM,
/// vCPUs, eventfds, sockets, vsock connections, each share's own few.
const VMM_BASE_FILES: u64 = 4096;

/// Where the VM's files are as husk-vmm sees them: inside its jail, or the
/// host's paths when it runs unjailed.
struct VmPaths {
    kernel: PathBuf,
    initramfs: PathBuf,
    rootfs: PathBuf,
    volumes: Option<PathBuf>,
    vsock: PathBuf,
    console: PathBuf,
}

fn jail_wanted(spec: &Spec) -> Result<bool, LaunchError> {
    match spec.annotations().as_ref().and_then(|a| a.get(JAIL_ANNOTATION)).map(String::as_str) {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(LaunchError::JailAnnotation(other.to_owned())),
    }
}

/// The VMM's RLIMIT_NOFILE: what its shares may hold open, within the
/// kernel's per-process ceiling (fs.nr_open).
fn vmm_open_files(shares: u64) -> u64 {
    let wanted = VMM_BASE_FILES + shares * FS_FILES_PER_SHARE;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse().ok());
    ceiling.map_or(wanted, |ceiling: u64| wanted.min(ceiling))
}

/// `HOST:JAIL[:ro]`, as husk-vmm's --jail-bind takes it.
fn bind_arg(host: &Path, jail: &str, read_only: bool) -> OsString {
    let mut arg = host.as_os_str().to_owned();
    arg.push(format!(":{jail}{}", if read_only { ":ro" } else { "" }));
    arg
}

/// The spec's RLIMIT_FSIZE as `fsize=SOFT:HARD`, if it sets one.
fn fsize_limit(spec: &Spec) -> Option<String> {
    let limits = spec.process().as_ref()?.rlimits().as_ref()?;
    let fsize = limits.iter().find(|l| l.typ() == oci_spec::runtime::PosixRlimitType::RlimitFsize)?;
    Some(format!("fsize={}:{}", fsize.soft(), fsize.hard()))
}

/// Prepares the VMM's jail under the container's directory; returns
/// husk-vmm's jail arguments and its view of the VM's files.
///
/// `<dir>/jail/` becomes the VMM's root: it holds the kernel and initramfs
/// (read-only), the rootfs share at `/rootfs`, the volumes share at
/// `/volumes`, the console log bound from `<dir>/console.log`, and the
/// vsock socket the VMM creates at `/vsock.sock`, which the runtime reaches
/// through the symlink `<dir>/vsock.sock`. The API socket stays
/// `<dir>/vmm.sock`: husk-vmm binds it before entering the jail. Every
/// mount is in the VMM's own mount namespace and ends with it; what stays
/// on the host are empty mount points, removed with the directory.
///
/// Resource limits: RLIMIT_CORE 0 (no dump of guest memory),
/// RLIMIT_NOFILE sized for virtio-fs's descriptor limits, and the spec's
/// RLIMIT_FSIZE if it has one, which bounds every file the guest writes
/// through virtio-fs (limits inside the guest are the guest root's to
/// raise). The spec's other limits are the container's, applied in the
/// guest: NPROC counts all of the host uid's processes, AS and MEMLOCK
/// would have to fit guest memory, and none would bound the container.
fn prepare_jail(
    dir: &ContainerDir,
    assets: &Assets,
    spec: &Spec,
    rootfs: &Path,
    volumes: Option<&Path>,
) -> Result<(Vec<OsString>, VmPaths), LaunchError> {
    let jail = dir.file("jail");
    let error = |path: &Path| {
        let path = path.to_owned();
        move |source| LaunchError::Jail { path, source }
    };
    std::fs::create_dir(&jail).map_err(error(&jail))?;
    // Whatever the umask: husk-vmm refuses a root others may write.
    std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755)).map_err(error(&jail))?;
    let console = dir.file("console.log");
    std::fs::OpenOptions::new().create(true).append(true).open(&console).map_err(error(&console))?;
    let vsock_link = dir.file("vsock.sock");
    std::os::unix::fs::symlink("jail/vsock.sock", &vsock_link).map_err(error(&vsock_link))?;

    let mut args: Vec<OsString> = vec!["--jail".into(), jail.into_os_string()];
    let mut bind = |host: &Path, jail: &str, read_only: bool| {
        args.push("--jail-bind".into());
        args.push(bind_arg(host, jail, read_only));
    };
    bind(&assets.kernel, "/vmlinux", true);
    bind(&assets.initramfs, "/initramfs.cpio", true);
    bind(rootfs, "/rootfs", false);
    if let Some(volumes) = volumes {
        bind(volumes, "/volumes", false);
    }
    bind(&console, "/console.log", false);
    let shares = 1 + u64::from(volumes.is_some());
    let limits =
        ["core=0".to_owned(), format!("nofile={}", vmm_open_files(shares))].into_iter().chain(fsize_limit(spec));
    for limit in limits {
        args.push("--jail-rlimit".into());
        args.push(limit.into());
    }
    let paths = VmPaths {
        kernel: "/vmlinux".into(),
        initramfs: "/initramfs.cpio".into(),
        rootfs: "/rootfs".into(),
        volumes: volumes.map(|_| "/volumes".into()),
        vsock: "/vsock.sock".into(),
        console: "/console.log".into(),
    };
    Ok((args, paths))
}

/// What `create` asks of the monitor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitLaunch {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub debug: bool,
}

/// The monitor's one message to whoever started it: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report<T> {
    Ok(T),
    Error(String),
}

pub fn send_report<T: Serialize>(mut to: File, report: &Report<T>) {
    let mut line = serde_json::to_vec(report).expect("serialisable");
    line.push(b'\n');
    let _ = to.write_all(&line);
}

/// Reads the monitor's report; `None` when it died without one. One line,
/// not the stream to its end: a process the monitor started may hold the
/// pipe open for as long as it lives.
pub fn read_report<T: for<'de> Deserialize<'de>>(from: File) -> Option<Report<T>> {
    let mut line = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(from), &mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Blocks the signals the monitor handles in its signal thread; must run
/// before any other thread starts, so they all inherit the mask.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in FORWARDED.iter().chain(&[libc::SIGWINCH]) {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

enum Event {
    Exited(Result<ExitStatus, ClientError>),
    VmmExited(String),
    Signal(i32),
}

fn spawn_signal_thread(set: libc::sigset_t, events: mpsc::Sender<Event>) {
    let _ = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        // SAFETY: the set is initialised and blocked in every thread.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal > 0 && events.send(Event::Signal(signal)).is_err() {
            return;
        }
    });
}

/// The resources a launch has made so far, undone in reverse on failure
/// and at the end of the container.
struct Resources {
    dir: ContainerDir,
    vmm: Option<Child>,
    network: Option<(PathBuf, String)>,
    volumes: Vec<StagedVolume>,
    cgroup: Option<host_cgroup::PlacedCgroup>,
}

impl Resources {
    /// Stops the VM (politely first if its agent is given) and undoes the
    /// host-side set-up. The state directory stays for `delete`.
    fn release(&mut self, agent: Option<&AgentClient>) {
        if let Some(mut vmm) = self.vmm.take() {
            if let Some(agent) = agent {
                let _ = agent.shutdown();
                let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
                while Instant::now() < deadline && matches!(vmm.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = vmm.kill();
            let _ = vmm.wait();
        }
        if let Some((netns, tap)) = self.network.take() {
            let _ = network::teardown(&netns, &tap);
        }
        shares::unstage(&self.volumes);
        self.volumes.clear();
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
    }
}

fn vmm_log_tail(dir: &ContainerDir) -> String {
    let mut text = String::new();
    for (name, label) in [("vmm.log", "husk-vmm log"), ("console.log", "guest console")] {
        let content = std::fs::read_to_string(dir.file(name)).unwrap_or_default();
        let lines: Vec<&str> = content.lines().collect();
        if !lines.is_empty() {
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            text.push_str(&format!("\n--- {label} ({}) ---\n{tail}", dir.file(name).display()));
        }
    }
    text
}

fn load_spec(bundle: &Path) -> Result<Spec, LaunchError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|err| LaunchError::Spec { path, reason: err.to_string() })
}

/// The spec's network namespace path, if it names one.
fn netns_path(spec: &Spec) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    namespaces
        .iter()
        .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|ns| ns.path().clone())
}

/// The resolver the engine prepared for the container, if it binds one.
fn bound_resolv_conf(spec: &Spec, bundle: &Path) -> Option<String> {
    let mounts = spec.mounts().as_ref()?;
    let mount = mounts.iter().find(|m| m.destination() == Path::new("/etc/resolv.conf") && shares::is_bind(m))?;
    std::fs::read_to_string(bundle.join(mount.source().as_ref()?)).ok()
}

/// A TAP name unique on the host and within IFNAMSIZ: from the id's hash.
fn tap_name(id: &str) -> String {
    let mut hash: u32 = 2_166_136_261;
    for byte in id.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(16_777_619);
    }
    format!("hsk{hash:08x}")
}

/// Drops the swap limit engines add beside a memory limit (podman:
/// twice the limit): the guest has no swap, so its cgroups have no
/// memory.swap.max to write, and the memory limit alone is the bound.
fn without_swap_limit(spec: &mut Spec) {
    let Some(resources) = spec.linux_mut().as_mut().and_then(|l| l.resources_mut().as_mut()) else { return };
    if let Some(memory) = resources.memory_mut().as_mut() {
        memory.set_swap(None);
        memory.set_swappiness(None);
    }
}

/// Boots the VM and creates the container in it; on success the VM and
/// the staged resources are in `resources`, the agent ready.
fn launch(
    request: &InitLaunch,
    spec: &Spec,
    resources: &mut Resources,
) -> Result<(AgentClient, VmRecord, StdioConfig), LaunchError> {
    let dir = resources.dir.clone();
    let assets = Assets::locate()?;
    let size = sizing::vm_size(spec, sizing::host_cpu_count())?;
    let rootfs = shares::rootfs_path(spec, &request.bundle)?;
    // The share stays writable even for `root.readonly`: the agent first
    // creates mount points in the rootfs (as runc does on the host), and
    // the container's view is made read-only after that by the spec. The
    // rootfs is the container's own, not something the host protects.
    let read_only_root = false;
    let prepared = shares::prepare(spec, &request.bundle, &dir.file("volumes"))?;
    resources.volumes = prepared.staged.clone();

    let netns = netns_path(spec);
    let guest_network = match &netns {
        Some(path) => {
            let tap = tap_name(&request.id);
            resources.network = Some((path.clone(), tap.clone()));
            Some(network::prepare(path, &tap)?)
        }
        None => None,
    };
    let netns_handle = netns.as_deref().map(network::NetnsHandle::open).transpose()?;

    let volumes_dir = prepared.volumes.as_ref().map(|v| PathBuf::from(&v.host_path));
    let (jail_args, vm_paths) = if jail_wanted(spec)? {
        prepare_jail(&dir, &assets, spec, &rootfs, volumes_dir.as_deref())?
    } else {
        let paths = VmPaths {
            kernel: assets.kernel.clone(),
            initramfs: assets.initramfs.clone(),
            rootfs: rootfs.clone(),
            volumes: volumes_dir.clone(),
            vsock: dir.file("vsock.sock"),
            console: dir.file("console.log"),
        };
        (Vec::new(), paths)
    };

    // The VMM: its own session is not needed (it is our child, and dies
    // with us by PR_SET_PDEATHSIG); it runs in the container's netns so
    // that it opens the TAP made there.
    let api_sock = dir.file("vmm.sock");
    let log = File::create(dir.file("vmm.log")).map_err(|source| LaunchError::Io { what: "vmm.log", source })?;
    let mut command = match &netns_handle {
        Some(netns) => netns.command(&assets.vmm),
        None => Command::new(&assets.vmm),
    };
    command
        .arg("--api-sock")
        .arg(&api_sock)
        .args(["--id", &request.id, "--level", if request.debug { "Debug" } else { "Warning" }])
        .arg("--serial-out")
        .arg(&vm_paths.console)
        .args(&jail_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|source| LaunchError::Io { what: "vmm.log", source })?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (prctl, sigprocmask) between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let vmm = command.spawn().map_err(|source| LaunchError::SpawnVmm { path: assets.vmm.clone(), source })?;
    let vmm_process = HostProcess::of(vmm.id() as i32)
        .ok_or_else(|| LaunchError::Io { what: "husk-vmm exited at once", source: io::ErrorKind::NotFound.into() })?;
    resources.vmm = Some(vmm);

    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()).map(|p| p.display().to_string());
    if let Some(path) = &cgroups_path {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        resources.cgroup = Some(host_cgroup::place(path, &request.id, &[me, vmm_process.pid])?);
    }

    let vmm_error = |source| LaunchError::Vmm { source, log: vmm_log_tail(&dir) };
    let api = {
        let vmm = resources.vmm.as_mut().expect("spawned above");
        vmm_client::VmmClient::wait_for_socket(&api_sock, Duration::from_secs(10), || {
            matches!(vmm.try_wait(), Ok(None))
        })
        .map_err(vmm_error)?
    };
    let debug = if request.debug { " husk.debug=1" } else { "" };
    api.put_boot_source(&BootSourceConfig {
        kernel_image_path: vm_paths.kernel.display().to_string(),
        initrd_path: Some(vm_paths.initramfs.display().to_string()),
        boot_args: Some(format!("{BOOT_ARGS}{debug}")),
    })
    .map_err(vmm_error)?;
    api.put_machine_config(&size.machine_config()).map_err(vmm_error)?;
    let uds_path = vm_paths.vsock.display().to_string();
    api.put_vsock(&VsockConfig { vsock_id: None, guest_cid: GUEST_CID, uds_path }).map_err(vmm_error)?;
    // The runtime's way to that socket: the socket itself, or the symlink
    // into the jail.
    let vsock_path = dir.file("vsock.sock");
    // Volumes squash the guest's root; the rootfs only when it is not an
    // engine-managed (root-owned) one (see the shares module).
    let rootfs_share = shares::fs_config(
        shares::ROOTFS_TAG,
        &vm_paths.rootfs,
        read_only_root,
        shares::rootfs_allows_host_root(&rootfs)?,
    );
    api.put_fs(&rootfs_share).map_err(vmm_error)?;
    if let Some(volumes) = &vm_paths.volumes {
        let volumes_share = shares::fs_config(shares::VOLUMES_TAG, volumes, false, false);
        api.put_fs(&volumes_share).map_err(vmm_error)?;
    }
    if let Some(net) = &guest_network {
        api.put_network_interface(&net.vmm_interface("eth0")).map_err(vmm_error)?;
    }
    api.instance_start().map_err(vmm_error)?;

    let agent_error = |source| LaunchError::Agent { source, log: vmm_log_tail(&dir) };
    let (agent, _) = AgentClient::wait_ready(&vsock_path, AGENT_READY_TIMEOUT).map_err(agent_error)?;
    if let Some(net) = &guest_network {
        let dns = bound_resolv_conf(spec, &request.bundle).map(|text| network::dns_from_resolv_conf(&text));
        agent.configure_network(net.to_agent_config(dns)).map_err(agent_error)?;
    }
    if let Some(hostname) = spec.hostname() {
        agent.set_hostname(hostname).map_err(agent_error)?;
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let stdio = StdioConfig { stdin: terminal || !stdio::is_dev_null(0), terminal };
    let shares: Vec<VolumeShare> = prepared.volumes.iter().cloned().collect();
    let mut guest_spec = prepared.spec;
    without_swap_limit(&mut guest_spec);
    agent
        .create(CreateContainer {
            container_id: request.id.clone(),
            spec: guest_spec,
            rootfs: RootfsShare { tag: shares::ROOTFS_TAG.into(), read_only: read_only_root },
            shares,
            user: None,
            stdio,
        })
        .map_err(agent_error)?;
    let launched = VmRecord {
        vmm: vmm_process,
        rootfs,
        netns: netns.clone(),
        tap: guest_network.as_ref().map(|n| n.tap_name.clone()),
        cgroups_path,
        volumes: resources.volumes.clone(),
        vcpus: size.vcpus,
        mem_mib: size.mem_mib,
    };
    Ok((agent, launched, stdio))
}

/// Joins this process's stdio (or a pty) to the agent's streams of one
/// process. Returns the pty (for resizes) and how many output pumps run.
fn attach_stdio(
    agent: &AgentClient,
    id: &str,
    exec_id: Option<&str>,
    stdio: StdioConfig,
    console_socket: Option<&Path>,
    done: &mpsc::Sender<&'static str>,
) -> Result<(Option<HostPty>, usize), LaunchError> {
    let agent_error = |source| LaunchError::Agent { source, log: String::new() };
    let io_error = |what| move |source| LaunchError::Io { what, source };
    if stdio.terminal {
        let pty = match console_socket {
            Some(socket) => HostPty::for_console_socket(socket)?,
            None => HostPty::own_terminal()?,
        };
        let stream = agent.attach(id, exec_id, StdioStream::Pty).map_err(agent_error)?;
        let reader = stream.try_clone().map_err(io_error("cloning the pty stream"))?;
        let input = pty.input.try_clone().map_err(io_error("cloning the pty"))?;
        let output = pty.output.try_clone().map_err(io_error("cloning the pty"))?;
        stdio::pump("pty-in", input, stream, None, |_| {}).map_err(io_error("starting a pump"))?;
        stdio::pump("pty-out", reader, output, Some(done.clone()), |_| {}).map_err(io_error("starting a pump"))?;
        if let Some((rows, cols)) = pty.window_size() {
            let _ = agent.resize_pty(id, exec_id, rows, cols);
        }
        return Ok((Some(pty), 1));
    }
    if stdio.stdin {
        let stream = agent.attach(id, exec_id, StdioStream::Stdin).map_err(agent_error)?;
        let input = stdio::dup_file(0)?;
        stdio::pump("stdin", input, stream, None, |stream| {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        })
        .map_err(io_error("starting a pump"))?;
    }
    for (name, stream, fd) in [("stdout", StdioStream::Stdout, 1), ("stderr", StdioStream::Stderr, 2)] {
        let from = agent.attach(id, exec_id, stream).map_err(agent_error)?;
        let to = stdio::dup_file(fd)?;
        stdio::pump(name, from, to, Some(done.clone()), |_| {}).map_err(io_error("starting a pump"))?;
    }
    Ok((None, 2))
}

fn report_failure(report: File, err: &LaunchError, resources: &mut Resources) -> i32 {
    resources.release(None);
    send_report::<VmRecord>(report, &Report::Error(err.to_string()));
    1
}

/// The init's monitor: boots the VM, creates the container, reports to
/// `report`, then supervises until the init exits. Returns the exit code
/// for this process.
pub fn run_init(dir: ContainerDir, request: InitLaunch, report: File, signals: libc::sigset_t) -> i32 {
    // Our own session: a terminal's signals aimed at the caller do not hit
    // the monitor, and a pty can become its controlling terminal.
    // SAFETY: setsid has no preconditions (we are not a group leader: we
    // were just forked by our parent).
    unsafe { libc::setsid() };
    let mut resources = Resources { dir: dir.clone(), vmm: None, network: None, volumes: vec![], cgroup: None };
    let spec = match load_spec(&request.bundle) {
        Ok(spec) => spec,
        Err(err) => return report_failure(report, &err, &mut resources),
    };
    let (events, event_rx) = mpsc::channel();
    let (agent, launched, stdio_config) = match launch(&request, &spec, &mut resources) {
        Ok(done) => done,
        Err(err) => return report_failure(report, &err, &mut resources),
    };
    let (done_tx, done_rx) = mpsc::channel();
    let (pty, outputs) =
        match attach_stdio(&agent, &request.id, None, stdio_config, request.console_socket.as_deref(), &done_tx) {
            Ok(attached) => attached,
            Err(err) => return report_failure(report, &err, &mut resources),
        };
    if let Some(pty) = &pty {
        if request.console_socket.is_some() {
            let _ = pty.make_controlling();
        }
    }
    spawn_waiter(&agent, &request.id, None, events.clone());
    spawn_vmm_waiter(&mut resources, events.clone());
    spawn_signal_thread(signals, events);
    send_report(report, &Report::Ok(launched));
    drop(done_tx);

    let end = supervise(&agent, &request.id, None, pty.as_ref(), &event_rx);
    let exit = match end {
        End::Exited(status) => {
            stdio::wait_pumps(&done_rx, outputs, DRAIN_TIMEOUT);
            ExitRecord { status, vm_lost: None }
        }
        // The engine only sees 137; the reason, with the VMM's log and the
        // console's last lines, goes to the runtime's log (see monitor_init).
        End::Lost(reason) => ExitRecord { status: KILLED, vm_lost: Some(format!("{reason}{}", vmm_log_tail(&dir))) },
    };
    let _ = dir.save_exit(&exit);
    drop(pty);
    resources.release(Some(&agent));
    exit.status.code.clamp(0, 255)
}

/// What a VM that vanished under its container reports: as if SIGKILLed.
const KILLED: ExitStatus = ExitStatus { code: 128 + libc::SIGKILL, signal: Some(libc::SIGKILL), oom_killed: false };

enum End {
    Exited(ExitStatus),
    Lost(String),
}

fn spawn_waiter(agent: &AgentClient, id: &str, exec_id: Option<&str>, events: mpsc::Sender<Event>) {
    let (agent, id, exec_id) = (AgentClient::new(agent.uds_path()), id.to_owned(), exec_id.map(str::to_owned));
    let _ = std::thread::Builder::new().name("wait".into()).spawn(move || {
        let _ = events.send(Event::Exited(agent.wait(&id, exec_id.as_deref())));
    });
}

/// The VMM is ours to reap; a thread waits for it so that its death (a
/// `kill -9`, a crash) ends the container at once.
fn spawn_vmm_waiter(resources: &mut Resources, events: mpsc::Sender<Event>) {
    let Some(pid) = resources.vmm.as_ref().map(|c| c.id() as libc::pid_t) else { return };
    let _ = std::thread::Builder::new().name("vmm-wait".into()).spawn(move || {
        // WNOWAIT: leave the child for Child::wait in release().
        // SAFETY: waitid on our own child with a zeroed siginfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let how = if rc == 0 {
            // SAFETY: waitid filled the child fields of the siginfo.
            let (code, status) = unsafe { (info.si_code, info.si_status()) };
            if code == libc::CLD_EXITED {
                format!("husk-vmm exited with status {status}")
            } else {
                format!("husk-vmm was killed by signal {status}")
            }
        } else {
            format!("waiting for husk-vmm: {}", io::Error::last_os_error())
        };
        let _ = events.send(Event::VmmExited(how));
    });
}

fn supervise(
    agent: &AgentClient,
    id: &str,
    exec_id: Option<&str>,
    pty: Option<&HostPty>,
    events: &mpsc::Receiver<Event>,
) -> End {
    loop {
        match events.recv() {
            Ok(Event::Exited(Ok(status))) => return End::Exited(status),
            Ok(Event::Exited(Err(err))) => return End::Lost(format!("lost the agent while waiting: {err}")),
            Ok(Event::VmmExited(how)) => return End::Lost(how),
            Ok(Event::Signal(libc::SIGWINCH)) => {
                if let Some((rows, cols)) = pty.and_then(HostPty::window_size) {
                    let _ = agent.resize_pty(id, exec_id, rows, cols);
                }
            }
            Ok(Event::Signal(signal)) => {
                let _ = agent.signal(id, exec_id, signal, false);
            }
            Err(_) => return End::Lost("the monitor's event channel closed".into()),
        }
    }
}

/// What `exec` asks of an exec monitor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecLaunch {
    pub id: String,
    pub exec_id: String,
    pub process: oci_spec::runtime::Process,
    pub console_socket: Option<PathBuf>,
}

/// An exec'd process's monitor: starts the process, reports, then lives
/// as long as it does and returns its exit code. `report` is `None` for a
/// foreground `exec`. A VM that dies ends it too: the wait connection goes
/// through the VMM's socket, which closes with it.
pub fn run_exec(dir: &ContainerDir, request: ExecLaunch, report: Option<File>, signals: libc::sigset_t) -> i32 {
    let fail = |report: Option<File>, message: String| {
        match report {
            Some(report) => send_report::<()>(report, &Report::Error(message)),
            None => eprintln!("husk exec: {message}"),
        }
        255
    };
    let agent = AgentClient::new(dir.file("vsock.sock"));
    let terminal = request.process.terminal().unwrap_or(false);
    let stdio_config = StdioConfig { stdin: terminal || !stdio::is_dev_null(0), terminal };
    if let Err(err) = agent.exec(ExecProcess {
        container_id: request.id.clone(),
        exec_id: request.exec_id.clone(),
        process: request.process.clone(),
        user: None,
        stdio: stdio_config,
    }) {
        return fail(report, format!("exec in {}: {err}", request.id));
    }
    let (done_tx, done_rx) = mpsc::channel();
    let attached = attach_stdio(
        &agent,
        &request.id,
        Some(&request.exec_id),
        stdio_config,
        request.console_socket.as_deref(),
        &done_tx,
    );
    let (pty, outputs) = match attached {
        Ok(attached) => attached,
        Err(err) => {
            let _ = agent.signal(&request.id, Some(&request.exec_id), libc::SIGKILL, false);
            return fail(report, err.to_string());
        }
    };
    drop(done_tx);
    if report.is_some() {
        // SAFETY: as in run_init.
        unsafe { libc::setsid() };
        if let (Some(pty), Some(_)) = (&pty, &request.console_socket) {
            let _ = pty.make_controlling();
        }
    }
    let (events, event_rx) = mpsc::channel();
    spawn_waiter(&agent, &request.id, Some(&request.exec_id), events.clone());
    spawn_signal_thread(signals, events);
    let exec_record = dir.file(&format!("exec-{}.json", request.exec_id));
    if let Some(me) = HostProcess::of(std::process::id() as i32) {
        let _ = crate::container_state::write_atomically(&exec_record, &serde_json::to_vec(&me).expect("serialisable"));
    }
    if let Some(report) = report {
        send_report(report, &Report::Ok(()));
    }
    let code = match supervise(&agent, &request.id, Some(&request.exec_id), pty.as_ref(), &event_rx) {
        End::Exited(status) => {
            stdio::wait_pumps(&done_rx, outputs, DRAIN_TIMEOUT);
            status.code
        }
        End::Lost(_) => KILLED.code,
    };
    let _ = std::fs::remove_file(exec_record);
    code.clamp(0, 255)
}

/// Host pids of the container's monitors that are alive: the init's and
/// those of exec'd processes (`ps` lists them).
pub fn live_exec_monitors(dir: &ContainerDir) -> Vec<HostProcess> {
    let Ok(entries) = std::fs::read_dir(&dir.path) else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
        .filter_map(|e| serde_json::from_slice::<HostProcess>(&std::fs::read(e.path()).ok()?).ok())
        .filter(HostProcess::is_alive)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_limit_is_dropped_and_the_memory_limit_kept() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "resources": { "memory": { "limit": 134217728, "swap": 268435456 } } },
        }))
        .unwrap();
        without_swap_limit(&mut spec);
        let memory = spec.linux().as_ref().unwrap().resources().as_ref().unwrap().memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(134217728), None));
    }

    #[test]
    fn the_jail_is_on_unless_the_annotation_says_false() {
        let with = |value: Option<&str>| {
            let mut spec = Spec::default();
            spec.set_annotations(value.map(|v| [(JAIL_ANNOTATION.to_owned(), v.to_owned())].into()));
            jail_wanted(&spec)
        };
        assert!(with(None).unwrap());
        assert!(with(Some("true")).unwrap());
        assert!(!with(Some("false")).unwrap());
        let err = with(Some("no")).unwrap_err().to_string();
        assert_eq!(err, r#"annotation husk.jail="no": must be "true" or "false""#);
    }

    #[test]
    fn jail_arguments_carry_binds_and_the_spec_fsize() {
        assert_eq!(bind_arg(Path::new("/a:b/k"), "/vmlinux", true), "/a:b/k:/vmlinux:ro");
        assert_eq!(bind_arg(Path::new("/r"), "/rootfs", false), "/r:/rootfs");
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "cwd": "/", "user": { "uid": 0, "gid": 0 }, "rlimits": [
                { "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024 },
                { "type": "RLIMIT_FSIZE", "soft": 1048576, "hard": 2097152 },
            ] },
        }))
        .unwrap();
        assert_eq!(fsize_limit(&spec).as_deref(), Some("fsize=1048576:2097152"));
        assert_eq!(fsize_limit(&Spec::default()), None);
    }

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ() {
        let a = tap_name(&"a".repeat(64));
        let b = tap_name(&"b".repeat(64));
        assert!(a.len() < 16 && b.len() < 16);
        assert_ne!(a, b);
    }

    #[test]
    fn reports_round_trip() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        send_report::<()>(File::from(std::os::fd::OwnedFd::from(w)), &Report::Error("boom".into()));
        let report: Option<Report<()>> = read_report(File::from(std::os::fd::OwnedFd::from(r)));
        assert!(matches!(report, Some(Report::Error(m)) if m == "boom"));
    }
}
