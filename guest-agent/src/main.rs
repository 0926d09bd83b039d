//! `husk-agent`: PID 1 inside every husk microVM.
//!
//! It mounts the guest's pseudo file systems, tells the host it is ready (a
//! console line and the boot-timer write of the guest-signal register), then
//! serves the host over vsock (running OCI containers, see `container` and
//! husk_api::agent_protocol) and supervises: it reaps orphans and powers the
//! VM off when asked (SIGTERM, SIGPWR, Ctrl-Alt-Del) or when something fatal
//! happens. PID 1 must never
//! exit — the kernel would panic — so every error path ends in `power_off`.

mod cmdline;
mod container;
mod mounts;
mod network;
mod power;
mod ready;
mod reaper;
mod server;
mod supervise;

use std::process::ExitCode;

use husk_api::guest_signal::{STATUS_AGENT_FAILED, STATUS_AGENT_PANICKED, STATUS_OK};

use crate::cmdline::{AgentOptions, ReadyAction};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(container::helper::HELPER_ARG) {
        return container::helper::main(&args[2..]);
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("husk-agent: must run as PID 1 (the microVM's /init); refusing to mount or power anything off");
        return ExitCode::from(2);
    }

    std::panic::set_hook(Box::new(|info| {
        eprintln!("husk-agent: panic: {info}");
        power::power_off(STATUS_AGENT_PANICKED);
    }));

    // Signals must be blocked before anything could spawn a thread, so that
    // every thread inherits the mask and only the supervisor loop sees them.
    let signals = match supervise::Signals::block() {
        Ok(signals) => signals,
        Err(err) => fatal(&err),
    };
    if let Err(err) = run(&signals) {
        fatal(&err);
    }
    unreachable!("the supervisor loop only ends by powering off");
}

fn run(signals: &supervise::Signals) -> Result<(), AgentError> {
    mounts::leave_initramfs()?;
    power::route_ctrl_alt_del_to_init()?;
    mounts::mount_all()?;
    mounts::ensure_console_stdio()?;
    let options = AgentOptions::from_proc_cmdline()?;
    for share in &options.mounts {
        mounts::mount_virtiofs(share)?;
    }
    if let Some(net) = &options.net {
        network::configure(net).map_err(AgentError::Network)?;
    }
    // A VM without a vsock device has no host channel; that is a
    // configuration, not an error.
    let registry = std::sync::Arc::new(container::Registry::default());
    if let Err(err) = server::start(registry) {
        eprintln!("husk-agent: no vsock channel to the host: {err}");
    }

    ready::announce();

    if options.ready_action == ReadyAction::PowerOff {
        power::power_off(STATUS_OK);
    }
    let watched = match &options.run {
        Some(program) => Some(supervise::spawn(program)?),
        None => None,
    };
    supervise::run(signals, watched)
}

fn fatal(err: &AgentError) -> ! {
    eprintln!("husk-agent: fatal: {err}");
    power::power_off(STATUS_AGENT_FAILED)
}

/// Everything that can stop the agent from bringing the guest up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount { fstype: &'static str, target: &'static str, source: std::io::Error },
    #[error("creating {path}: {source}")]
    CreatePath { path: &'static str, source: std::io::Error },
    #[error("attaching stdio to /dev/console: {0}")]
    Console(std::io::Error),
    #[error("mounting virtio-fs tag {tag} on {path}: {source}")]
    MountShare { tag: String, path: String, source: std::io::Error },
    #[error("configuring eth0: {0}")]
    Network(std::io::Error),
    #[error("starting {program}: {source}")]
    Run { program: String, source: std::io::Error },
    #[error("reading the kernel command line: {0}")]
    Cmdline(std::io::Error),
    #[error("bad kernel command line option {option:?}: {reason}")]
    BadOption { option: String, reason: &'static str },
    #[error("{what}: {source}")]
    Signals { what: &'static str, source: std::io::Error },
}
