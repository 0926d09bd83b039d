//! The VMM: the microVM's configuration before boot, the running VM after,
//! and the event-loop subscriber that serves API requests, feeds the
//! console and notices the VM's end.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use husk_api::vmm::{
    BootSourceConfig, FullVmConfig, InstanceInfo, InstanceState, LoggerConfig, MachineConfig, MetricsConfig, VmState,
};
use husk_api::vmm_exit;
use vmm_sys_util::eventfd::EventFd;

use crate::rpc::{VmmAction, VmmActionError, VmmData, VmmResponse};
use crate::vm::{start_vm, RunningVm, VmOptions};
use crate::vm_exit::{ExitSignal, VmExit};

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
    options: VmOptions,
    vm: Option<RunningVm>,
    exit: Arc<ExitSignal>,
    api: Option<ApiChannel>,
    stdin_open: bool,
    exit_code: Option<u8>,
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
            options,
            vm: None,
            exit: Arc::new(ExitSignal::new()?),
            api,
            stdin_open: true,
            exit_code: None,
        })
    }

    /// Set once the VM has ended (or failed to be served): the process's
    /// exit status.
    pub fn exit_code(&self) -> Option<u8> {
        self.exit_code
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
        self.handle(VmmAction::InstanceStart).map(|_| ())
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
                let vm = start_vm(boot, &self.machine, &self.options, self.exit.clone(), instance_start)
                    .map_err(|e| refuse(format!("Failed to start the microVM: {e}")))?;
                tracing::info!("InstanceStart: VM built in {} us", instance_start.elapsed().as_micros());
                self.vm = Some(vm);
                self.state = InstanceState::Running;
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

fn check_readable(what: &str, path: &str) -> Result<(), VmmActionError> {
    std::fs::File::open(path).map(|_| ()).map_err(|e| refuse(format!("The {what} file cannot be opened: {path}: {e}")))
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
        // SAFETY: fstat on fd 0 with a valid out-pointer.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
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
