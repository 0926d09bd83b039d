//! PID 1's main loop: reap orphans, and power off when asked to.

use std::io;

use husk_api::guest_signal::STATUS_OK;

use crate::{power, AgentError};

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

/// Waits for signals forever. Orphans re-parented to PID 1 are reaped;
/// SIGTERM, SIGPWR, SIGINT (Ctrl-Alt-Del) and SIGHUP power the VM off.
pub fn run(signals: &Signals) -> Result<(), AgentError> {
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
            libc::SIGCHLD => reap_all(),
            _ => {
                eprintln!("husk-agent: signal {signal}: powering off");
                power::power_off(STATUS_OK);
            }
        }
    }
}

/// Several children may have exited for one SIGCHLD: reap until none is left.
fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
