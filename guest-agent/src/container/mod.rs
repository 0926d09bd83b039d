//! The containers of this VM: set up from the host's OCI spec with youki's
//! libcontainer (in a helper process, see `helper`), their processes'
//! stdio held for the host to attach, their exits recorded.
//!
//! Guest layout of a container `ID`:
//! - `/run/husk/containers/ID/rootfs`: the rootfs share (virtio-fs);
//! - `/run/husk/containers/ID/shares/N`: volume shares;
//! - `/run/husk/containers/ID/bundle/config.json`: the adapted spec;
//! - `/run/husk/libcontainer/ID`: libcontainer's state;
//! - `/sys/fs/cgroup/husk/ID`: its cgroup.

mod cgroup;
pub mod helper;
mod process;
mod spec;
mod users;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk_api::agent_protocol::{
    validate_id, AgentError, ContainerStats, CreateContainer, ErrorKind, ExecProcess, ExitStatus, StdioConfig,
    StdioStream,
};
use oci_spec::runtime::LinuxResources;

pub use process::Pump;
use process::{lock, ChildStdio, HostStdio, Process};
use spec::{GuestLayout, MountedShare};

/// Where containers' guest-side directories live.
const CONTAINERS_DIR: &str = "/run/husk/containers";

/// Where the host-configured resolver file is kept for containers.
pub const RESOLV_CONF: &str = "/run/husk/resolv.conf";

fn error(kind: ErrorKind, message: impl Into<String>) -> AgentError {
    AgentError { kind, message: message.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Init is waiting for `Start`.
    Created,
    Running,
}

struct Container {
    id: String,
    dir: PathBuf,
    rootfs: PathBuf,
    /// Mount points to undo on delete, innermost last.
    mounts: Vec<PathBuf>,
    state: Mutex<State>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn process(&self, exec_id: Option<&str>) -> Result<Arc<Process>, AgentError> {
        match exec_id {
            None => Ok(self.init.clone()),
            Some(exec_id) => lock(&self.execs)
                .get(exec_id)
                .cloned()
                .ok_or_else(|| error(ErrorKind::NotFound, format!("container {} has no process {exec_id:?}", self.id))),
        }
    }
}

/// Every container of the VM.
#[derive(Default)]
pub struct Registry {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or deleted, so that a second request for the same
    /// id fails instead of racing the first.
    busy: Mutex<std::collections::HashSet<String>>,
}

/// Marks an id busy for the lifetime of the guard.
struct BusyGuard<'a> {
    registry: &'a Registry,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.registry.busy).remove(&self.id);
    }
}

impl Registry {
    fn claim(&self, id: &str) -> Result<BusyGuard<'_>, AgentError> {
        if !lock(&self.busy).insert(id.to_owned()) {
            return Err(error(ErrorKind::InvalidState, format!("container {id} is being created or deleted")));
        }
        Ok(BusyGuard { registry: self, id: id.to_owned() })
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        lock(&self.containers).get(id).cloned().ok_or_else(|| error(ErrorKind::NotFound, format!("no container {id}")))
    }

    /// OCI create: mounts the shares, adapts the spec, has libcontainer set
    /// up the container, and records its init process.
    pub fn create(&self, request: CreateContainer) -> Result<i32, AgentError> {
        let id = request.container_id.clone();
        validate_id(&id).map_err(|m| error(ErrorKind::BadRequest, m))?;
        let _busy = self.claim(&id)?;
        if lock(&self.containers).contains_key(&id) {
            return Err(error(ErrorKind::AlreadyExists, format!("container {id} exists")));
        }
        let dir = Path::new(CONTAINERS_DIR).join(&id);
        let mut mounts = Vec::new();
        let result = self.create_in(&dir, request, &mut mounts);
        if result.is_err() {
            // A failed create leaves nothing behind in the guest.
            let _ = helper::run(helper::Operation::Delete { id: &id, force: true }, ChildStdio::default());
            undo_mounts(&mounts);
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn create_in(&self, dir: &Path, request: CreateContainer, mounts: &mut Vec<PathBuf>) -> Result<i32, AgentError> {
        let id = request.container_id.as_str();
        let internal = |what: &str, err: std::io::Error| error(ErrorKind::Internal, format!("{what}: {err}"));
        create_dir(dir).map_err(|e| internal(&format!("creating {}", dir.display()), e))?;
        let rootfs = dir.join("rootfs");
        mount_share(&request.rootfs.tag, &rootfs, request.rootfs.read_only)?;
        mounts.push(rootfs.clone());
        let mut shares = Vec::new();
        for (n, share) in request.shares.iter().enumerate() {
            let guest_path = dir.join("shares").join(n.to_string());
            mount_share(&share.tag, &guest_path, share.read_only)?;
            mounts.push(guest_path.clone());
            shares.push(MountedShare { share: share.clone(), guest_path });
        }
        let resolv = Path::new(RESOLV_CONF);
        let layout = GuestLayout {
            container_id: id,
            rootfs: &rootfs,
            shares: &shares,
            resolv_conf: resolv.exists().then_some(resolv),
        };
        let mut spec = request.spec;
        spec::adapt(&mut spec, &layout, request.user.as_deref(), request.stdio.terminal)
            .map_err(|e| error(ErrorKind::InvalidSpec, e.to_string()))?;
        let bundle = dir.join("bundle");
        create_dir(&bundle).map_err(|e| internal("creating the bundle", e))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| error(ErrorKind::Internal, format!("writing the spec: {e}")))?;

        let (pid, host_stdio) =
            run_with_stdio(&dir.join("console-init.sock"), request.stdio, |stdio, console_socket| {
                helper::run(helper::Operation::Create { id, bundle: &bundle, console_socket }, stdio)
            })?;
        let container = Arc::new(Container {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            rootfs,
            mounts: mounts.clone(),
            state: Mutex::new(State::Created),
            init: Arc::new(Process::new(pid, host_stdio)),
            execs: Mutex::new(HashMap::new()),
        });
        watch_exit(id, container.init.clone());
        lock(&self.containers).insert(id.to_owned(), container);
        Ok(pid)
    }

    /// OCI start.
    pub fn start(&self, id: &str) -> Result<i32, AgentError> {
        let container = self.get(id)?;
        let mut state = lock(&container.state);
        if *state != State::Created {
            return Err(error(ErrorKind::InvalidState, format!("container {id} was started already")));
        }
        if container.init.exit_status().is_some() {
            return Err(error(ErrorKind::InvalidState, format!("container {id}'s init exited before start")));
        }
        helper::run(helper::Operation::Start { id }, ChildStdio::default())
            .map_err(|m| error(ErrorKind::Internal, m))?;
        *state = State::Running;
        Ok(container.init.pid)
    }

    /// Runs another process in a running container.
    pub fn exec(&self, request: ExecProcess) -> Result<i32, AgentError> {
        let container = self.get(&request.container_id)?;
        validate_id(&request.exec_id).map_err(|m| error(ErrorKind::BadRequest, m))?;
        if *lock(&container.state) != State::Running || container.init.exit_status().is_some() {
            return Err(error(ErrorKind::InvalidState, format!("container {} is not running", container.id)));
        }
        // Reserve the id first; a concurrent exec of the same id fails.
        if lock(&container.execs).contains_key(&request.exec_id) {
            return Err(error(ErrorKind::AlreadyExists, format!("process {} exists", request.exec_id)));
        }
        let mut process = request.process;
        if process.terminal().unwrap_or(false) != request.stdio.terminal {
            return Err(error(ErrorKind::InvalidSpec, "process.terminal and the requested stdio disagree"));
        }
        spec::adapt_process(&mut process, &container.rootfs, request.user.as_deref())
            .map_err(|e| error(ErrorKind::InvalidSpec, e.to_string()))?;
        let process_json = container.dir.join(format!("exec-{}.json", request.exec_id));
        let json = serde_json::to_vec(&process).map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
        std::fs::write(&process_json, json)
            .map_err(|e| error(ErrorKind::Internal, format!("writing {}: {e}", process_json.display())))?;
        let console = container.dir.join(format!("console-{}.sock", request.exec_id));
        let id = container.id.as_str();
        let result = run_with_stdio(&console, request.stdio, |stdio, console_socket| {
            helper::run(helper::Operation::Exec { id, process_json: &process_json, console_socket }, stdio)
        });
        let _ = std::fs::remove_file(&process_json);
        let (pid, host_stdio) = result?;
        let process = Arc::new(Process::new(pid, host_stdio));
        watch_exit(id, process.clone());
        lock(&container.execs).insert(request.exec_id, process);
        Ok(pid)
    }

    pub fn signal(&self, id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<(), AgentError> {
        let container = self.get(id)?;
        if !(1..=64).contains(&signal) {
            return Err(error(ErrorKind::BadRequest, format!("{signal} is not a signal number")));
        }
        if all {
            return cgroup::signal_all(id, signal)
                .map_err(|e| error(ErrorKind::Internal, format!("signalling {id}: {e}")));
        }
        let process = container.process(exec_id)?;
        process
            .signal(signal)
            .map_err(|e| error(ErrorKind::InvalidState, format!("signalling pid {}: {e}", process.pid)))
    }

    pub fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus, AgentError> {
        Ok(self.get(id)?.process(exec_id)?.wait())
    }

    /// Takes a stdio stream for an attaching connection.
    pub fn attach(
        &self,
        id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
        connection: &UnixStream,
    ) -> Result<Pump, AgentError> {
        self.get(id)?
            .process(exec_id)?
            .take_stream(stream, connection)
            .map_err(|m| error(ErrorKind::InvalidState, format!("{stream}: {m}")))
    }

    pub fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), AgentError> {
        self.get(id)?.process(exec_id)?.close_stdin();
        Ok(())
    }

    pub fn resize_pty(&self, id: &str, exec_id: Option<&str>, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.get(id)?
            .process(exec_id)?
            .resize_pty(rows, cols)
            .map_err(|e| error(ErrorKind::InvalidState, format!("resizing the pty: {e}")))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        self.get(id)?;
        cgroup::stats(id).map_err(|e| error(ErrorKind::Internal, format!("reading {id}'s cgroup: {e}")))
    }

    /// OCI update: writes the limits set in `resources` to the container's
    /// cgroup. A created container counts as live (its init is waiting in
    /// the cgroup); one whose init has exited has nothing left to limit.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), AgentError> {
        let container = self.get(id)?;
        if container.init.exit_status().is_some() {
            return Err(error(ErrorKind::InvalidState, format!("container {id} has exited")));
        }
        let writes = cgroup::resource_writes(resources, |file| cgroup::read(id, file).ok())
            .map_err(|e| error(ErrorKind::InvalidSpec, e.to_string()))?;
        let ignored = cgroup::ignored_resources(resources);
        if !ignored.is_empty() && crate::cmdline::debug_enabled() {
            eprintln!(
                "husk-agent: debug: update of {id}: ignoring {} (no cgroup v2 file for them)",
                ignored.join(", ")
            );
        }
        cgroup::apply(id, &writes).map_err(|e| error(ErrorKind::Internal, format!("updating {id}'s cgroup: {e}")))
    }

    /// OCI pause/resume: freezes or thaws the container's cgroup and
    /// returns once the kernel reports it done.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), AgentError> {
        let container = self.get(id)?;
        if container.init.exit_status().is_some() {
            return Err(error(ErrorKind::InvalidState, format!("container {id} has exited")));
        }
        cgroup::freeze(id, frozen).map_err(|e| {
            error(ErrorKind::Internal, format!("{} {id}'s cgroup: {e}", if frozen { "freezing" } else { "thawing" }))
        })
    }

    /// Removes a container: with `force` its processes are killed first.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let _busy = self.claim(id)?;
        let container = self.get(id)?;
        if container.init.exit_status().is_none() {
            if !force {
                return Err(error(ErrorKind::InvalidState, format!("container {id} is running; stop it or force")));
            }
            let _ = cgroup::signal_all(id, libc::SIGKILL);
            let _ = container.init.signal(libc::SIGKILL);
            container.init.wait();
        }
        helper::run(helper::Operation::Delete { id, force: true }, ChildStdio::default())
            .map_err(|m| error(ErrorKind::Internal, m))?;
        undo_mounts(&container.mounts);
        let _ = std::fs::remove_dir_all(&container.dir);
        lock(&self.containers).remove(id);
        Ok(())
    }
}

/// Sets up a process's stdio (pipes, or a console socket for the pty
/// master), runs `launch` with the child's ends, and returns the pid and
/// the agent's ends.
fn run_with_stdio(
    console_path: &Path,
    stdio: StdioConfig,
    launch: impl FnOnce(ChildStdio, Option<&Path>) -> Result<Option<i32>, String>,
) -> Result<(i32, HostStdio), AgentError> {
    let internal = |what: &str, err: std::io::Error| error(ErrorKind::Internal, format!("{what}: {err}"));
    let no_pid = || error(ErrorKind::Internal, "the container helper reported no pid");
    if stdio.terminal {
        let _ = std::fs::remove_file(console_path);
        let listener = UnixListener::bind(console_path).map_err(|e| internal("binding the console socket", e))?;
        let launched = launch(ChildStdio::default(), Some(console_path));
        let _ = std::fs::remove_file(console_path);
        let pid = launched.map_err(|m| error(ErrorKind::Internal, m))?.ok_or_else(no_pid)?;
        let master = process::receive_pty_master(&listener).map_err(|e| internal("receiving the pty master", e))?;
        return Ok((pid, HostStdio { pty: Some(master), ..Default::default() }));
    }
    let (host, child) = process::pipes(stdio.stdin).map_err(|e| internal("creating stdio pipes", e))?;
    let pid = launch(child, None).map_err(|m| error(ErrorKind::Internal, m))?.ok_or_else(no_pid)?;
    Ok((pid, host))
}

/// Records the process's exit status when the reaper sees it, with whether
/// the container's cgroup OOM-killed anything meanwhile.
fn watch_exit(container_id: &str, process: Arc<Process>) {
    let id = container_id.to_owned();
    let baseline = cgroup::oom_kills(&id);
    let spawned = std::thread::Builder::new().name(format!("wait-{}", process.pid)).spawn(move || {
        let mut status = ExitStatus::from_wait_status(crate::reaper::wait(process.pid));
        status.oom_killed = cgroup::oom_kills(&id) > baseline;
        process.set_exit(status);
    });
    if let Err(err) = spawned {
        eprintln!("husk-agent: no thread to wait for a container process: {err}");
    }
}

fn create_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Mounts a share with the agent's one virtio-fs mount (as for
/// `husk.mount=`), its error in the protocol's terms.
fn mount_share(tag: &str, path: &Path, read_only: bool) -> Result<(), AgentError> {
    let request =
        crate::cmdline::MountRequest { tag: tag.to_owned(), path: path.display().to_string(), read_only, dax: false };
    crate::mounts::mount_virtiofs(&request).map_err(|err| {
        let hint = match &err {
            crate::AgentError::MountShare { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
                " (the VM has no share with that tag)"
            }
            _ => "",
        };
        error(ErrorKind::InvalidSpec, format!("{err}{hint}"))
    })
}

fn undo_mounts(mounts: &[PathBuf]) {
    for path in mounts.iter().rev() {
        if let Ok(target) = CString::new(path.display().to_string()) {
            // SAFETY: a valid C string; a lazy unmount cannot fail on busy.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
