//! `husk-vmm`: one microVM per process, started the way Firecracker is.
//!
//! Exit statuses are husk_api::vmm_exit's: 0 when the guest ended itself, 1
//! for a VMM error, 2 for a bad command line, 3 for a KVM failure, 100+s when
//! the guest agent powered off with status s, 4 when a thread broke its
//! seccomp filter.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Parser;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use husk_api::vmm::{FullVmConfig, LogLevel};
use husk_api::vmm_exit;
use husk_vmm::api_server::ApiServer;
use husk_vmm::devices::serial::SerialOut;
use husk_vmm::jail::{Bind, JailConfig, Rlimit};
use husk_vmm::seccomp::SeccompFilters;
use husk_vmm::vm::VmOptions;
use husk_vmm::vmm::{ApiChannel, Vmm};
use vmm_sys_util::eventfd::EventFd;

#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version, about = "husk's microVM monitor (Firecracker-compatible API)")]
struct Args {
    /// Path of the API's Unix socket.
    #[arg(long, default_value = "/run/husk.socket", conflicts_with = "no_api")]
    api_sock: PathBuf,
    /// Boot from a Firecracker-format JSON configuration at once.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// The instance's ID, shown in logs and GET /.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Log to this file or FIFO instead of stderr.
    #[arg(long)]
    log_path: Option<String>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, default_value = "Warning")]
    level: LogLevel,
    /// Log the guest's boot time (InstanceStart to the agent's ready signal).
    #[arg(long)]
    boot_timer: bool,
    /// Where the guest console goes: stdout, off, or a file or FIFO path.
    #[arg(long, default_value = "stdout")]
    serial_out: SerialOut,
    /// Back guest memory with a memfd instead of anonymous memory.
    #[arg(long)]
    memfd: bool,
    /// Do not ask for transparent huge pages on guest memory.
    #[arg(long)]
    no_thp: bool,
    /// Run without the seccomp filters (for debugging only: a compromised
    /// VMM thread could then make any system call).
    #[arg(long)]
    no_seccomp: bool,
    /// Run jailed with this directory as the root (husk_vmm::jail): it must
    /// exist, belong to root and be writable by root only. Paths the VM's
    /// configuration names (API or --config-file) and --serial-out are then
    /// paths in the jail; --api-sock, --log-path and the --config-file
    /// itself are host paths, opened before the jail is entered.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// A host file or directory to bind into the jail (repeatable).
    #[arg(long, value_name = "HOST_PATH:JAIL_PATH[:ro]", requires = "jail")]
    jail_bind: Vec<Bind>,
    /// Switch to this uid once jailed (needs --jail-gid).
    #[arg(long, requires_all = ["jail", "jail_gid"])]
    jail_uid: Option<u32>,
    /// Switch to this gid once jailed (needs --jail-uid).
    #[arg(long, requires_all = ["jail", "jail_uid"])]
    jail_gid: Option<u32>,
    /// A resource limit for the jailed VMM (repeatable), e.g. fsize=1048576
    /// or nofile=4096:8192; "unlimited" for no limit.
    #[arg(long, value_name = "NAME=SOFT[:HARD]", requires = "jail")]
    jail_rlimit: Vec<Rlimit>,
}

impl Args {
    fn jail_config(&self) -> Option<JailConfig> {
        Some(JailConfig {
            root: self.jail.clone()?,
            binds: self.jail_bind.clone(),
            ids: self.jail_uid.zip(self.jail_gid),
            rlimits: self.jail_rlimit.clone(),
        })
    }
}

/// virtio-fs holds an O_PATH descriptor per guest-held inode and one per
/// open file: use the whole hard limit rather than the default 1024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { vmm_exit::USAGE } else { 0 });
        }
    };
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("husk-vmm: error: {err:#}");
            ExitCode::from(vmm_exit::VMM_ERROR)
        }
    }
}

fn run(args: Args) -> Result<u8> {
    husk_vmm::logger::init(&args.id, args.log_path.as_deref(), args.level).context("setting up the log")?;
    raise_open_file_limit();
    let jail = args.jail_config();
    let seccomp = if args.no_seccomp {
        tracing::warn!("--no-seccomp: the VMM's threads run without seccomp filters (for debugging only)");
        SeccompFilters::disabled()
    } else {
        SeccompFilters::new().context("preparing the seccomp filters")?
    };
    let seccomp = Arc::new(seccomp);
    let options = VmOptions {
        boot_timer: args.boot_timer,
        serial_out: args.serial_out,
        memfd: args.memfd,
        transparent_huge_pages: !args.no_thp,
        seccomp: seccomp.clone(),
    };

    let server =
        if args.no_api { None } else { Some(ApiServer::bind(&args.api_sock).context("binding the API socket")?) };
    let config_text = match &args.config_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    // Before any thread starts: the mount namespace and capabilities are
    // the calling thread's, and threads started later inherit them.
    if let Some(jail) = &jail {
        if let Err(err) = husk_vmm::jail::enter(jail) {
            tracing::error!("jail: {err}");
            eprintln!("husk-vmm: error: jail: {err}");
            return Ok(if err.is_usage() { vmm_exit::USAGE } else { vmm_exit::VMM_ERROR });
        }
        tracing::info!("jailed in {}", jail.root.display());
    }

    let api = if let Some(server) = server {
        let (to_vmm, requests) = mpsc::channel();
        let (responses, from_vmm) = mpsc::channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK).context("creating the API eventfd")?;
        server.spawn(to_vmm, wake.try_clone().context("cloning the API eventfd")?, from_vmm, seccomp)?;
        Some(ApiChannel { requests, responses, wake })
    } else {
        None
    };

    let vmm = Arc::new(Mutex::new(Vmm::new(args.id.clone(), options, api).context("creating the VMM")?));
    if let (Some(path), Some(text)) = (&args.config_file, config_text) {
        let config: FullVmConfig =
            serde_json::from_str(&text).with_context(|| format!("parsing the configuration {}", path.display()))?;
        if let Err(err) = vmm.lock().expect("vmm lock").boot_from_config(config) {
            bail!("booting from {}: {err}", path.display());
        }
    }

    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| anyhow::anyhow!("creating the event loop: {e:?}"))?;
    events.add_subscriber(vmm.clone());
    loop {
        // Devices created by a config-file boot or by the last API request.
        for subscriber in vmm.lock().expect("vmm lock").take_new_subscribers() {
            events.add_subscriber(subscriber);
        }
        events.run().map_err(|e| anyhow::anyhow!("event loop: {e:?}"))?;
        if let Some(code) = vmm.lock().expect("vmm lock").exit_code() {
            husk_vmm::metrics::flush_if_configured();
            // A jailed VMM no longer sees the host path it bound.
            if !args.no_api && jail.is_none() {
                let _ = std::fs::remove_file(&args.api_sock);
            }
            // vCPU threads may still be inside KVM_RUN: ending the process
            // ends them with it.
            std::process::exit(i32::from(code));
        }
    }
}
