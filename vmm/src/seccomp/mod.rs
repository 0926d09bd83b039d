//! seccomp filters: a default-deny allowlist of system calls per kind of
//! thread, so that a guest that takes over a vCPU thread or a device finds
//! only the calls that thread needs.
//!
//! The allowlists are data, `filters/x86_64.json` in seccompiler's JSON
//! format, every rule with a comment saying who needs it; `build.rs`
//! compiles them into BPF with seccompiler, and each thread installs its
//! own:
//!
//! - `api`: the `husk-api` thread when it starts (its connection threads
//!   inherit it), before any request is read;
//! - `event_loop`: the main thread at InstanceStart, once the VM is built
//!   (the guest cannot make the event loop do anything before the request
//!   that starts it returns);
//! - `vcpu`: each vCPU thread before its first KVM_RUN.
//!
//! Configuration (opening the kernel, creating the KVM VM, guest memory,
//! TAP and share set-up) happens before InstanceStart, so no filter needs
//! it. A call outside a thread's list raises SIGSYS, whose handler writes
//! one line naming the thread and the call to stderr and to the log file,
//! and ends the process with [`vmm_exit::SECCOMP`]. (A thread that has
//! SIGSYS blocked at that moment, as glibc does inside posix_spawn, is
//! killed by the kernel with SIGSYS instead, without the line.)
//! `--no-seccomp` turns all of it off, for debugging only.
//!
//! clone3(2) passes its flags in memory, where a filter cannot look, so the
//! API threads also get `no_clone3`, which fails it with ENOSYS: glibc then
//! falls back to clone(2), whose flags the `api` filter checks (threads
//! only, no fork). Of two filters the kernel takes the stricter answer.

mod syscall_names;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use husk_api::vmm_exit;
use seccompiler::{sock_filter, BpfProgram};

/// The BPF programs `build.rs` compiled from `filters/x86_64.json`.
mod built {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// The filter that refuses clone3 with ENOSYS (see the module's notes).
const NO_CLONE3: &str = "no_clone3";

/// Which filter a thread installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The API thread and its connection threads.
    Api,
    /// The main thread once the VM runs: devices, console, API requests.
    EventLoop,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Api, ThreadKind::EventLoop, ThreadKind::Vcpu];

    /// The filter's key in the JSON.
    pub fn filter_name(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::EventLoop => "event_loop",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Api => "API",
            ThreadKind::EventLoop => "event loop",
            ThreadKind::Vcpu => "vCPU",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp filters have no {0:?} filter")]
    MissingFilter(&'static str),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error("installing the {kind} seccomp filter on thread {thread:?}: {source}")]
    Install {
        kind: ThreadKind,
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
}

struct Programs {
    api: BpfProgram,
    event_loop: BpfProgram,
    vcpu: BpfProgram,
    no_clone3: BpfProgram,
}

/// The compiled filters, or none with `--no-seccomp`.
pub struct SeccompFilters {
    programs: Option<Programs>,
}

impl fmt::Debug for SeccompFilters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.programs {
            None => f.write_str("SeccompFilters(disabled)"),
            Some(p) => write!(
                f,
                "SeccompFilters(api: {}, event_loop: {}, vcpu: {} BPF instructions)",
                p.api.len(),
                p.event_loop.len(),
                p.vcpu.len()
            ),
        }
    }
}

/// The built-in program `name`.
fn built_program(name: &'static str) -> Result<BpfProgram, SeccompError> {
    let (_, program) =
        built::PROGRAMS.iter().find(|(built, _)| *built == name).ok_or(SeccompError::MissingFilter(name))?;
    Ok(program.iter().map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k }).collect())
}

impl SeccompFilters {
    /// husk's filters, ready to install.
    pub fn new() -> Result<Self, SeccompError> {
        let programs = Programs {
            api: built_program(ThreadKind::Api.filter_name())?,
            event_loop: built_program(ThreadKind::EventLoop.filter_name())?,
            vcpu: built_program(ThreadKind::Vcpu.filter_name())?,
            no_clone3: built_program(NO_CLONE3)?,
        };
        Ok(Self { programs: Some(programs) })
    }

    /// No filters: every `apply` does nothing.
    pub fn disabled() -> Self {
        Self { programs: None }
    }

    pub fn enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// Installs `kind`'s filter on the calling thread, for good; the thread
    /// (and threads it starts) can never make a call outside it again.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(programs) = &self.programs else { return Ok(()) };
        install_sigsys_handler()?;
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        remember_thread(&name, kind);
        let install = |program: &BpfProgram| {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                kind,
                thread: name.clone(),
                source,
            })
        };
        // no_clone3 first: it allows the prctl and seccomp calls that
        // installing the second filter makes.
        let program = match kind {
            ThreadKind::Api => {
                install(&programs.no_clone3)?;
                &programs.api
            }
            ThreadKind::EventLoop => &programs.event_loop,
            ThreadKind::Vcpu => &programs.vcpu,
        };
        install(program)?;
        tracing::debug!("seccomp: the {kind} filter is installed on thread {name:?}");
        Ok(())
    }
}

/// Longest thread name Linux keeps (TASK_COMM_LEN less the NUL).
const NAME_LEN: usize = 15;

thread_local! {
    /// This thread's name and filter, for the SIGSYS handler, which must
    /// not allocate or take locks.
    static THREAD: Cell<([u8; NAME_LEN], u8, Option<ThreadKind>)> = const { Cell::new(([0; NAME_LEN], 0, None)) };
}

/// Records, for the SIGSYS handler's line, that the calling thread runs
/// under `kind`'s filter inherited from the thread that started it.
pub fn inherited(kind: ThreadKind) {
    remember_thread(std::thread::current().name().unwrap_or("?"), kind);
}

fn remember_thread(name: &str, kind: ThreadKind) {
    let mut bytes = [0u8; NAME_LEN];
    let len = name.len().min(NAME_LEN);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    THREAD.with(|thread| thread.set((bytes, len as u8, Some(kind))));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    static ERRNO: AtomicI32 = AtomicI32::new(0);
    ONCE.call_once(|| {
        // SAFETY: sigaction is plain data; all zeroes is a valid value.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handle_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: a valid sigaction for SIGSYS whose handler only makes
        // async-signal-safe calls.
        let rc = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            ERRNO.store(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL), Ordering::Relaxed);
        }
    });
    match ERRNO.load(Ordering::Relaxed) {
        0 => Ok(()),
        errno => Err(SeccompError::Handler(std::io::Error::from_raw_os_error(errno))),
    }
}

/// The name of x86_64 system call `nr`, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u32::try_from(nr).ok()?;
    let table = syscall_names::X86_64;
    table.binary_search_by_key(&nr, |&(n, _)| n).ok().map(|i| table[i].1)
}

/// A line built in a fixed buffer: no allocation in a signal handler.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut value: i64) {
        if value < 0 {
            self.push(b"-");
            value = value.checked_neg().unwrap_or(i64::MAX);
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// The line the SIGSYS handler writes for a call `nr` from a thread.
fn violation_line(name: &[u8], kind: Option<ThreadKind>, nr: i64) -> Line {
    let mut line = Line { buf: [0; 256], len: 0 };
    line.push(b"husk-vmm: seccomp: thread '");
    line.push(name);
    line.push(b"'");
    if let Some(kind) = kind {
        line.push(b" (");
        line.push(kind.filter_name().as_bytes());
        line.push(b" filter)");
    }
    line.push(b" made a disallowed system call ");
    line.push_number(nr);
    line.push(b" (");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b"); killing the VMM\n");
    line
}

/// Where `siginfo_t`'s `_sigsys._syscall` lies on x86_64: after si_signo,
/// si_errno, si_code, the union's alignment padding and `_call_addr`
/// (the libc crate has no accessor for it).
const SI_SYSCALL_OFFSET: usize = 24;
/// si_code of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;

extern "C" fn handle_sigsys(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if signal != libc::SIGSYS || info.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let nr = if code == SYS_SECCOMP {
        // SAFETY: for SYS_SECCOMP the union holds _sigsys, whose _syscall
        // is the int at SI_SYSCALL_OFFSET, inside the 128-byte siginfo_t.
        i64::from(unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() })
    } else {
        -1
    };
    let (name, len, kind) = THREAD.with(Cell::get);
    let line = violation_line(&name[..usize::from(len)], kind, nr);
    let bytes = &line.buf[..line.len];
    // SAFETY: write(2) and _exit(2) are async-signal-safe and both in every
    // filter; the buffer is valid for its length.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        if let Some(fd) = crate::logger::sink_fd().filter(|&fd| fd != libc::STDERR_FILENO) {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        }
        libc::_exit(i32::from(vmm_exit::SECCOMP));
    }
}
