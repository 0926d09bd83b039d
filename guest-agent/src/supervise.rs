//! PID 1's main loop: reap orphans, and power off when asked to.

use std::io;

use husk_api::guest_signal::STATUS_OK;

use crate::{power, reaper, AgentError};

/// Signals PID 1 handles synchronously, with `sigwaitinfo`.
const HANDLED: &[libc::c_int] = &[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR, libc::SIGHUP];

/// The blocked signal set; constructing it blocks the signals in this thread
/// (and in every thread spawned later).
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    pub fn block() -> Result<Self, AgentError> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid sigset_t and every signal number is valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for &signal in HANDLED {
                libc::sigaddset(&mut set, signal);
            }
        }
        // SAFETY: set is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(AgentError::Signals { what: "blocking signals", source: io::Error::from_raw_os_error(rc) });
        }
        Ok(Self { set })
    }
}

/// Starts `program` (husk.run) with the agent's stdio and the signals it
/// blocks unblocked again.
pub fn spawn(argv: &[String]) -> Result<libc::pid_t, AgentError> {
    use std::os::unix::process::CommandExt;
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let mut command = std::process::Command::new(program);
    command.args(&argv[1..]);
    command.env_clear().env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin").env("HOME", "/");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| AgentError::Run { program: program.to_owned(), source })?;
    Ok(child.id() as libc::pid_t)
}

/// Waits for signals forever. Orphans re-parented to PID 1 are reaped into
/// the exit table (see `reaper`); SIGTERM, SIGPWR, SIGINT (Ctrl-Alt-Del) and
/// SIGHUP power the VM off, and so does the end of the `watched` process,
/// with its exit status (128+N for a signal N).
pub fn run(signals: &Signals, watched: Option<libc::pid_t>) -> Result<(), AgentError> {
    if let Some(pid) = watched {
        std::thread::Builder::new()
            .name("husk-run-wait".into())
            .spawn(move || {
                let status = husk_api::agent_protocol::ExitStatus::from_wait_status(reaper::wait(pid));
                println!("husk-agent: the husk.run program (pid {pid}) exited with status {}", status.code);
                power::power_off(status.code.clamp(0, 255) as u8);
            })
            .map_err(|source| AgentError::Run { program: "the husk.run waiter".into(), source })?;
    }
    loop {
        // SAFETY: the set is initialised; siginfo is not needed.
        let signal = unsafe { libc::sigwaitinfo(&signals.set, std::ptr::null_mut()) };
        match signal {
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(AgentError::Signals { what: "waiting for signals", source: err });
                }
            }
            libc::SIGCHLD => reaper::reap_all(),
            _ => {
                eprintln!("husk-agent: signal {signal}: powering off");
                power::power_off(STATUS_OK);
            }
        }
    }
}
