//! libcontainer operations, each in a short-lived copy of the agent.
//!
//! libcontainer clones the container's processes with raw clone3 and runs
//! Rust code in the children. In the multi-threaded agent another thread
//! could hold an allocator or stdio lock at that instant and the child would
//! deadlock on it; so, like a runc-style CLI, every operation runs in a
//! fresh single-threaded process: `/proc/self/exe container-op …`, with the
//! container's stdio as its fds 0–2 and its one-line JSON result on fd 3.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use super::process::ChildStdio;
use crate::reaper;

/// The argument that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "container-op";

/// libcontainer's state directory in the guest.
pub const STATE_ROOT: &str = "/run/husk/libcontainer";

/// The fd the helper writes its result to.
const RESULT_FD: libc::c_int = 3;

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HelperResult {
    Pid(i32),
    Done,
    Error(String),
}

/// An operation for the helper.
pub enum Operation<'a> {
    /// Create the container from the bundle (OCI create).
    Create { id: &'a str, bundle: &'a Path, console_socket: Option<&'a Path> },
    /// Let the created container's init run its program.
    Start { id: &'a str },
    /// Run the process described by `process_json` in the container.
    Exec { id: &'a str, process_json: &'a Path, console_socket: Option<&'a Path> },
    /// Remove the container's state and cgroup.
    Delete { id: &'a str, force: bool },
}

impl Operation<'_> {
    fn args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        let console = |c: &Option<&Path>| c.map(path).unwrap_or_default();
        match self {
            Self::Create { id, bundle, console_socket } => {
                vec!["create".into(), id.to_string(), path(bundle), console(console_socket)]
            }
            Self::Start { id } => vec!["start".into(), id.to_string()],
            Self::Exec { id, process_json, console_socket } => {
                vec!["exec".into(), id.to_string(), path(process_json), console(console_socket)]
            }
            Self::Delete { id, force } => vec!["delete".into(), id.to_string(), force.to_string()],
        }
    }
}

/// Runs `operation` in a helper process and returns the pid it reports
/// (the container's init or the exec'd process), if any.
pub fn run(operation: Operation, stdio: ChildStdio) -> Result<Option<i32>, String> {
    let (result_read, result_write) =
        super::process::pipe().map_err(|err| format!("creating the helper's result pipe: {err}"))?;
    let stdio_of = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .args(operation.args())
        .env_clear()
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .stdin(stdio_of(stdio.stdin))
        .stdout(stdio_of(stdio.stdout))
        .stderr(stdio_of(stdio.stderr));
    let raw_result = result_write.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec: dup2 (it
    // clears close-on-exec on the copy) and sigprocmask, so that neither the
    // helper nor the container inherits the signals the agent blocks.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw_result, RESULT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = command.spawn().map_err(|err| format!("starting the container helper: {err}"))?;
    drop(result_write);
    // The status comes from the reaper: PID 1 reaps every child itself.
    let status = reaper::wait(child.id() as libc::pid_t);
    // The container's processes inherit the result pipe too and may hold it
    // open for their whole life: read what is there now, never to EOF.
    let mut file = std::fs::File::from(result_read);
    // SAFETY: F_SETFL on an fd we own.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut text = String::new();
    let _ = (&mut file).take(64 * 1024).read_to_string(&mut text);
    match serde_json::from_str::<HelperResult>(text.lines().next().unwrap_or_default()) {
        Ok(HelperResult::Pid(pid)) => Ok(Some(pid)),
        Ok(HelperResult::Done) => Ok(None),
        Ok(HelperResult::Error(message)) => Err(message),
        Err(_) => Err(format!(
            "the container helper ended with wait status {status:#x} and no result{}",
            if text.is_empty() { String::new() } else { format!(" ({text:?})") }
        )),
    }
}

/// The helper's main: runs one operation and reports on fd 3.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let result = match operate(args) {
        Ok(Some(pid)) => HelperResult::Pid(pid),
        Ok(None) => HelperResult::Done,
        Err(message) => HelperResult::Error(message),
    };
    let failed = matches!(result, HelperResult::Error(_));
    // SAFETY: the agent opened fd 3 for us; it is ours to own and close.
    let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(RESULT_FD) });
    let line = serde_json::to_string(&result).unwrap_or_else(|_| r#"{"error":"unencodable result"}"#.into());
    let _ = writeln!(out, "{line}");
    std::process::ExitCode::from(u8::from(failed))
}

fn console(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn operate(args: &[String]) -> Result<Option<i32>, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let builder = |id: &str| {
        ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(STATE_ROOT)
            .map_err(|err| format!("libcontainer state root {STATE_ROOT}: {err}"))
    };
    match args.as_slice() {
        ["create", id, bundle, console_socket] => {
            let container = builder(id)?
                .with_console_socket(console(console_socket))
                .as_init(*bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|err| format!("creating container {id}: {}", chain(&err)))?;
            Ok(container.pid().map(|pid| pid.as_raw()))
        }
        ["start", id] => {
            let mut container = load(id)?;
            container.start().map_err(|err| format!("starting container {id}: {}", chain(&err)))?;
            Ok(container.pid().map(|pid| pid.as_raw()))
        }
        ["exec", id, process_json, console_socket] => {
            let pid = builder(id)?
                .with_console_socket(console(console_socket))
                .as_tenant()
                .with_process(Some(*process_json))
                .with_detach(true)
                .build()
                .map_err(|err| format!("executing in container {id}: {}", chain(&err)))?;
            Ok(Some(pid.as_raw()))
        }
        ["delete", id, force] => {
            load(id)?.delete(*force == "true").map_err(|err| format!("deleting container {id}: {}", chain(&err)))?;
            Ok(None)
        }
        _ => Err(format!("unknown container operation {args:?}")),
    }
}

fn load(id: &str) -> Result<Container, String> {
    Container::load(Path::new(STATE_ROOT).join(id)).map_err(|err| format!("loading container {id}: {}", chain(&err)))
}

/// An error with its sources, `outer: inner: innermost`.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
