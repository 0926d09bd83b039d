//! The VMM: the microVM's configuration before boot, the running VM after,
//! and the event-loop subscriber that serves API requests, feeds the
//! console and notices the VM's end.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use husk_api::devices::{validate_id, FsConfig, NetworkInterfaceConfig, VsockConfig};
use husk_api::vmm::{
    BootSourceConfig, FullVmConfig, InstanceInfo, InstanceState, LoggerConfig, MachineConfig, MetricsConfig, VmState,
};
use husk_api::vmm_exit;
use vmm_sys_util::eventfd::EventFd;

use crate::rpc::{VmmAction, VmmActionError, VmmData, VmmResponse};
use crate::seccomp::ThreadKind;
use crate::vm::{start_vm, RunningVm, VirtioDeviceHandle, VmOptions, MAX_VIRTIO_DEVICES};
use crate::vm_exit::{ExitSignal, ResetSource, VmExit};

const NOT_SUPPORTED_AFTER_START: &str = "The requested operation is not supported after starting the microVM.";
const NOT_SUPPORTED_BEFORE_START: &str = "The requested operation is not supported before starting the microVM.";

/// The API side of the VMM's channel: requests in, responses out, and the
/// eventfd the API thread writes after sending a request.
pub struct ApiChannel {
    pub requests: Receiver<VmmAction>,
    pub responses: Sender<VmmResponse>,
    pub wake: EventFd,
}

pub struct Vmm {
    instance_id: String,
    state: InstanceState,
    boot_source: Option<BootSourceConfig>,
    machine: MachineConfig,
    logger: Option<LoggerConfig>,
    metrics: Option<MetricsConfig>,
    /// The virtio devices to build at InstanceStart, validated. Lists keep
    /// the order devices were first configured in; a replaced device keeps
    /// its place.
    vsock: Option<VsockConfig>,
    network_interfaces: Vec<NetworkInterfaceConfig>,
    fs: Vec<FsConfig>,
    options: VmOptions,
    vm: Option<RunningVm>,
    exit: Arc<ExitSignal>,
    api: Option<ApiChannel>,
    stdin_open: bool,
    exit_code: Option<u8>,
    /// Event-loop subscribers created while handling a request (the virtio
    /// devices at InstanceStart), for the loop's owner to add.
    new_subscribers: Vec<Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>>,
}

fn refuse(message: impl Into<String>) -> VmmActionError {
    VmmActionError(message.into())
}

impl Vmm {
    pub fn new(instance_id: String, options: VmOptions, api: Option<ApiChannel>) -> std::io::Result<Self> {
        Ok(Self {
            instance_id,
            state: InstanceState::NotStarted,
            boot_source: None,
            machine: MachineConfig::default(),
            logger: None,
            metrics: None,
            vsock: None,
            network_interfaces: Vec::new(),
            fs: Vec::new(),
            options,
            vm: None,
            exit: Arc::new(ExitSignal::new()?),
            api,
            stdin_open: true,
            exit_code: None,
            new_subscribers: Vec::new(),
        })
    }

    /// Set once the VM has ended (or failed to be served): the process's
    /// exit status.
    pub fn exit_code(&self) -> Option<u8> {
        self.exit_code
    }

    /// Subscribers to add to the event loop (an event-loop callback cannot
    /// add them itself: the manager is busy running it).
    pub fn take_new_subscribers(&mut self) -> Vec<Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>> {
        std::mem::take(&mut self.new_subscribers)
    }

    /// The vsock device's configuration, if one was put.
    pub fn vsock(&self) -> Option<&VsockConfig> {
        self.vsock.as_ref()
    }

    /// The network interfaces, in the order they were configured. Ids, TAP
    /// names and guest MACs are unique; `guest_mac` is in canonical form
    /// (lower case) when set.
    pub fn network_interfaces(&self) -> &[NetworkInterfaceConfig] {
        &self.network_interfaces
    }

    /// The virtio-fs shares, in the order they were configured. Ids and tags
    /// are unique; each `shared_dir` was a directory when it was configured.
    pub fn fs(&self) -> &[FsConfig] {
        &self.fs
    }

    /// How many virtio devices the configuration asks for, at most
    /// [`MAX_VIRTIO_DEVICES`].
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock.is_some()) + self.network_interfaces.len() + self.fs.len()
    }

    fn started(&self) -> bool {
        self.state != InstanceState::NotStarted
    }

    fn pre_boot(&self) -> Result<(), VmmActionError> {
        if self.started() {
            return Err(refuse(NOT_SUPPORTED_AFTER_START));
        }
        Ok(())
    }

    fn post_boot(&self) -> Result<&RunningVm, VmmActionError> {
        self.vm.as_ref().ok_or_else(|| refuse(NOT_SUPPORTED_BEFORE_START))
    }

    /// Applies a Firecracker-format configuration file and starts the VM.
    pub fn boot_from_config(&mut self, config: FullVmConfig) -> Result<(), VmmActionError> {
        if let Some(logger) = config.logger {
            self.handle(VmmAction::PutLogger(logger))?;
        }
        if let Some(metrics) = config.metrics {
            self.handle(VmmAction::PutMetrics(metrics))?;
        }
        if let Some(machine) = config.machine_config {
            self.handle(VmmAction::PutMachineConfig(machine))?;
        }
        let boot_source = config.boot_source.ok_or_else(|| refuse("the configuration file has no \"boot-source\""))?;
        self.handle(VmmAction::PutBootSource(boot_source))?;
        if let Some(vsock) = config.vsock {
            self.handle(VmmAction::PutVsock(vsock)).map_err(|e| refuse(format!("\"vsock\": {e}")))?;
        }
        // Through the API a second PUT of an id replaces the first; in a
        // file, the same id twice is a mistake that would drop a device.
        unique_ids("network-interfaces", "iface_id", config.network_interfaces.iter().map(|n| n.iface_id.as_str()))?;
        for net in config.network_interfaces {
            let id = net.iface_id.clone();
            self.handle(VmmAction::PutNetworkInterface(net))
                .map_err(|e| refuse(format!("\"network-interfaces\" (iface_id {id:?}): {e}")))?;
        }
        unique_ids("fs", "fs_id", config.fs.iter().map(|f| f.fs_id.as_str()))?;
        for fs in config.fs {
            let id = fs.fs_id.clone();
            self.handle(VmmAction::PutFs(fs)).map_err(|e| refuse(format!("\"fs\" (fs_id {id:?}): {e}")))?;
        }
        self.handle(VmmAction::InstanceStart).map(|_| ())
    }

    /// Refuses a new device when the configuration already has the most the
    /// VM can attach (one interrupt line each).
    fn room_for(&self, what: &str) -> Result<(), VmmActionError> {
        let count = self.virtio_device_count();
        if count >= MAX_VIRTIO_DEVICES {
            return Err(refuse(format!(
                "Cannot add {what}: a microVM has at most {MAX_VIRTIO_DEVICES} virtio devices \
                 (vsock, network interfaces and file systems together), and {count} are configured."
            )));
        }
        Ok(())
    }

    fn put_vsock(&mut self, config: VsockConfig) -> VmmResponse {
        self.pre_boot()?;
        config.validate().map_err(|e| refuse(format!("Invalid vsock configuration: {e}")))?;
        if self.vsock.is_none() {
            self.room_for("the vsock device")?;
        }
        if config.vsock_id.is_some() {
            tracing::warn!("PUT /vsock: vsock_id is deprecated (as in Firecracker) and ignored");
        }
        // As Firecracker: a second PUT replaces the device.
        self.vsock = Some(config);
        Ok(VmmData::Empty)
    }

    fn put_network_interface(&mut self, mut config: NetworkInterfaceConfig) -> VmmResponse {
        self.pre_boot()?;
        let id = config.iface_id.clone();
        validate_id(&id).map_err(|e| refuse(format!("Invalid iface_id {id:?}: {e}")))?;
        config.validate().map_err(|e| refuse(format!("Invalid network interface {id}: {e}")))?;
        // Stored in canonical form, so that two spellings of one address
        // are seen as the same and GET /vm/config writes it as Firecracker.
        config.guest_mac = config.guest_mac_addr().map_err(refuse)?.map(|mac| mac.to_string());
        // Firecracker's rule: no two interfaces share a TAP or a guest MAC.
        for other in self.network_interfaces.iter().filter(|other| other.iface_id != id) {
            if other.host_dev_name == config.host_dev_name {
                return Err(refuse(format!(
                    "The host device name {} is already in use by network interface {}.",
                    config.host_dev_name, other.iface_id
                )));
            }
            if let (Some(mac), Some(other_mac)) = (&config.guest_mac, &other.guest_mac) {
                if mac == other_mac {
                    return Err(refuse(format!(
                        "The guest MAC address {mac} is already in use by network interface {}.",
                        other.iface_id
                    )));
                }
            }
        }
        match self.network_interfaces.iter().position(|other| other.iface_id == id) {
            Some(index) => self.network_interfaces[index] = config,
            None => {
                self.room_for(&format!("network interface {id}"))?;
                self.network_interfaces.push(config);
            }
        }
        Ok(VmmData::Empty)
    }

    fn put_fs(&mut self, config: FsConfig) -> VmmResponse {
        self.pre_boot()?;
        let id = config.fs_id.clone();
        validate_id(&id).map_err(|e| refuse(format!("Invalid fs_id {id:?}: {e}")))?;
        config.validate().map_err(|e| refuse(format!("Invalid file system {id}: {e}")))?;
        // The guest mounts a share by its tag: two shares with one tag would
        // make the mount pick one of them.
        if let Some(other) = self.fs.iter().find(|other| other.fs_id != id && other.tag == config.tag) {
            return Err(refuse(format!(
                "The mount tag {:?} is already used by file system {}.",
                config.tag, other.fs_id
            )));
        }
        check_shared_dir(&config.shared_dir)?;
        match self.fs.iter().position(|other| other.fs_id == id) {
            Some(index) => self.fs[index] = config,
            None => {
                self.room_for(&format!("file system {id}"))?;
                self.fs.push(config);
            }
        }
        Ok(VmmData::Empty)
    }

    pub fn handle(&mut self, action: VmmAction) -> VmmResponse {
        tracing::debug!("API action {action:?}");
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                app_name: "husk".into(),
                id: self.instance_id.clone(),
                state: self.state,
                vmm_version: env!("CARGO_PKG_VERSION").into(),
            })),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(self.machine.clone())),
            VmmAction::GetVmConfig => Ok(VmmData::VmConfig(FullVmConfig {
                boot_source: self.boot_source.clone(),
                machine_config: Some(self.machine.clone()),
                logger: self.logger.clone(),
                metrics: self.metrics.clone(),
                vsock: self.vsock.clone(),
                network_interfaces: self.network_interfaces.clone(),
                fs: self.fs.clone(),
                ..Default::default()
            })),
            VmmAction::PutBootSource(boot) => {
                self.pre_boot()?;
                check_readable("kernel", &boot.kernel_image_path)?;
                if let Some(initrd) = &boot.initrd_path {
                    check_readable("initrd", initrd)?;
                }
                if let Some(args) = &boot.boot_args {
                    crate::boot::build_cmdline(args).map_err(|e| refuse(e.to_string()))?;
                }
                self.boot_source = Some(boot);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMachineConfig(machine) => {
                self.pre_boot()?;
                machine.validate().map_err(refuse)?;
                self.machine = machine;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchMachineConfig(update) => {
                self.pre_boot()?;
                let machine = self.machine.apply(&update);
                machine.validate().map_err(refuse)?;
                self.machine = machine;
                Ok(VmmData::Empty)
            }
            VmmAction::PutLogger(config) => {
                self.pre_boot()?;
                crate::logger::configure(&config).map_err(|e| refuse(e.to_string()))?;
                self.logger = Some(config);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMetrics(config) => {
                self.pre_boot()?;
                crate::metrics::configure(&config.metrics_path).map_err(|e| refuse(e.to_string()))?;
                self.metrics = Some(config);
                Ok(VmmData::Empty)
            }
            VmmAction::PutVsock(config) => self.put_vsock(config),
            VmmAction::PutNetworkInterface(config) => self.put_network_interface(config),
            VmmAction::PutFs(config) => self.put_fs(config),
            VmmAction::FlushMetrics => {
                crate::metrics::flush().map_err(|e| refuse(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            VmmAction::InstanceStart => {
                self.pre_boot()?;
                let boot = self
                    .boot_source
                    .as_ref()
                    .ok_or_else(|| refuse("Cannot start microvm without kernel configuration."))?;
                let instance_start = Instant::now();
                let devices = self.build_virtio_devices()?;
                let vm = start_vm(boot, &self.machine, &self.options, devices, self.exit.clone(), instance_start)
                    .map_err(|e| refuse(format!("Failed to start the microVM: {e}")))?;
                self.new_subscribers.extend(vm.subscribers.iter().cloned());
                tracing::info!("InstanceStart: VM built in {} us", instance_start.elapsed().as_micros());
                self.vm = Some(vm);
                self.state = InstanceState::Running;
                // This is the event loop's thread (API requests and a config
                // file's boot are handled on it), and the guest cannot make it
                // do anything before this request returns: from here on it
                // needs only what running devices do.
                if let Err(err) = self.options.seccomp.apply(ThreadKind::EventLoop) {
                    // The vCPUs run: the VM cannot go on unconfined.
                    tracing::error!("{err}");
                    self.exit_code = Some(vmm_exit::VMM_ERROR);
                    return Err(refuse(format!("Failed to start the microVM: {err}")));
                }
                Ok(VmmData::Empty)
            }
            VmmAction::SendCtrlAltDel => {
                let vm = self.post_boot()?;
                vm.i8042.lock().expect("i8042 lock").send_ctrl_alt_del().map_err(|e| refuse(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchVm(state) => {
                let vm = self.post_boot()?;
                match (state, self.state) {
                    (VmState::Paused, InstanceState::Running) => {
                        vm.pause();
                        self.state = InstanceState::Paused;
                    }
                    (VmState::Resumed, InstanceState::Paused) => {
                        vm.resume();
                        self.state = InstanceState::Running;
                    }
                    // Already in the asked-for state: nothing to do, as Firecracker.
                    _ => {}
                }
                Ok(VmmData::Empty)
            }
        }
    }

    /// The configured virtio devices, in a fixed order (vsock, network
    /// interfaces, shares) so each gets the same MMIO slot and IRQ on every
    /// boot of the same configuration.
    fn build_virtio_devices(&self) -> Result<Vec<VirtioDeviceHandle>, VmmActionError> {
        use crate::devices::virtio::{fs::Fs, net::Net, vsock::Vsock};
        let mut devices = Vec::with_capacity(self.virtio_device_count());
        if let Some(config) = &self.vsock {
            let vsock = Vsock::new(config).map_err(|e| refuse(format!("Cannot create the vsock device: {e}")))?;
            crate::metrics::register_device("vsock".into(), vsock.metrics());
            devices.push(VirtioDeviceHandle::new(vsock));
        }
        for config in &self.network_interfaces {
            let net = Net::new(config)
                .map_err(|e| refuse(format!("Cannot create network interface {}: {e}", config.iface_id)))?;
            crate::metrics::register_device(format!("net_{}", config.iface_id), net.metrics());
            devices.push(VirtioDeviceHandle::new(net));
        }
        // Every share's descriptors, exhausted together, fit in RLIMIT_NOFILE.
        let limits = crate::devices::virtio::fs::share_limits(self.fs.len());
        for config in &self.fs {
            // FsError names the share itself.
            let fs =
                Fs::with_limits(config, limits).map_err(|e| refuse(format!("Cannot create the file system: {e}")))?;
            crate::metrics::register_device(format!("fs_{}", config.fs_id), fs.metrics());
            devices.push(VirtioDeviceHandle::new(fs));
        }
        Ok(devices)
    }

    fn serve_api(&mut self) {
        let Some(api) = self.api.take() else { return };
        let _ = api.wake.read();
        while let Ok(action) = api.requests.try_recv() {
            let response = self.handle(action);
            if let Err(err) = &response {
                crate::metrics::METRICS.api.bad_requests.inc();
                tracing::warn!("API request refused: {err}");
            }
            crate::metrics::METRICS.api.requests.inc();
            if api.responses.send(response).is_err() {
                tracing::error!("the API thread is gone");
            }
        }
        self.api = Some(api);
    }

    fn vm_ended(&mut self) {
        let _ = self.exit.event().read();
        let Some(reason) = self.exit.reason() else { return };
        let code = match &reason {
            VmExit::PowerOff { status } => vmm_exit::for_guest_power_off(*status),
            // A triple fault ends the VM as a reset does (Linux's
            // `reboot=t`), but it is also how a guest crashes before it has
            // a console: say so where the default log level shows it.
            VmExit::Reset(source @ ResetSource::TripleFault) => {
                tracing::warn!("the guest reset ({source:?}): ending the VM");
                vmm_exit::GUEST_SHUTDOWN
            }
            VmExit::Reset(source) => {
                tracing::info!("the guest reset ({source:?}): ending the VM");
                vmm_exit::GUEST_SHUTDOWN
            }
            VmExit::KvmFailure(detail) => {
                tracing::error!("the VM failed: {detail}");
                vmm_exit::KVM_FAILURE
            }
        };
        self.exit_code = Some(code);
    }

    fn forward_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = match std::io::stdin().lock().read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            // EOF or an unreadable stdin: stop watching it.
            let _ = ops.remove(Events::new(&std::io::stdin(), EventSet::IN));
            self.stdin_open = false;
            return;
        }
        if let Some(vm) = &self.vm {
            let taken = vm.serial.lock().expect("serial lock").enqueue_input(&buf[..n]).unwrap_or(0);
            if taken < n {
                tracing::debug!("console input: {} bytes dropped, the guest is not reading", n - taken);
            }
        }
    }
}

/// The kernel or initrd must be a regular file the VMM can read. Opened
/// without blocking: a plain open of a FIFO waits for a writer, and would
/// stall the VMM's event loop (and with it the whole API) on one request.
fn check_readable(what: &str, path: &str) -> Result<(), VmmActionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| refuse(format!("The {what} file cannot be opened: {path}: {e}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(refuse(format!("The {what} file {path} is not a regular file.")));
    }
    Ok(())
}

/// The share must be a directory now; were it missing, the device would
/// fail only at boot, far from the request that named it. (It follows
/// symbolic links, as the device's open of the directory will.)
fn check_shared_dir(path: &str) -> Result<(), VmmActionError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(refuse(format!("The shared directory {path} is not a directory."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(refuse(format!("The shared directory {path} does not exist.")))
        }
        Err(e) => Err(refuse(format!("The shared directory {path} cannot be inspected: {e}"))),
    }
}

/// Refuses a config-file device list that names one id twice.
fn unique_ids<'a>(section: &str, field: &str, ids: impl Iterator<Item = &'a str>) -> Result<(), VmmActionError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(refuse(format!("\"{section}\": {field} {id:?} appears more than once")));
        }
    }
    Ok(())
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |fd: &dyn AsRawFd, what: &str| {
            if let Err(err) = ops.add(Events::new_raw(fd.as_raw_fd(), EventSet::IN)) {
                tracing::error!("watching {what}: {err:?}");
            }
        };
        watch(self.exit.event(), "the VM exit event");
        if let Some(api) = &self.api {
            watch(&api.wake, "the API event");
        }
        // Console input only when stdin is something to read (not a closed
        // or /dev/null stdin, which would report readable forever).
        let stdin = std::io::stdin();
        // SAFETY: libc::stat is plain data; all zeroes is a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on fd 0 with a valid out-pointer.
        let readable = unsafe { libc::fstat(stdin.as_raw_fd(), &mut stat) } == 0
            && matches!(stat.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFCHR | libc::S_IFSOCK)
            && !is_dev_null(&stat);
        if readable {
            watch(&stdin, "stdin");
        } else {
            self.stdin_open = false;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.event().as_raw_fd() {
            self.vm_ended();
        } else if self.api.as_ref().is_some_and(|api| api.wake.as_raw_fd() == fd) {
            self.serve_api();
        } else if fd == std::io::stdin().as_raw_fd() && self.stdin_open {
            self.forward_stdin(ops);
        }
    }
}

fn is_dev_null(stat: &libc::stat) -> bool {
    // /dev/null is character device 1:3.
    stat.st_mode & libc::S_IFMT == libc::S_IFCHR && libc::major(stat.st_rdev) == 1 && libc::minor(stat.st_rdev) == 3
}
