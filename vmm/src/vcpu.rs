//! vCPU threads: each runs KVM_RUN in a loop, hands port and MMIO exits to
//! the buses, and reports how the VM ended. Pausing kicks every thread out of
//! KVM_RUN with a signal and parks it until resumed.

use std::cell::Cell;
use std::sync::{mpsc, Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::Bus;
use crate::metrics::METRICS;
use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::vm::VmError;
use crate::vm_exit::{ExitSignal, ResetSource, VmExit};

/// The real-time signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's kvm_run page, for the kick handler to set
    /// `immediate_exit` in: a kick that lands just before KVM_RUN then
    /// still makes it return at once instead of being lost.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's mmap'ed kvm_run page, set
            // by the thread before it first enters KVM_RUN and valid for the
            // thread's life; a single byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

#[derive(Default)]
struct ControlState {
    paused: bool,
    parked: usize,
}

/// Pause/resume shared by the VMM and its vCPU threads.
#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    /// Called by a vCPU thread between exits: blocks while paused.
    fn park_while_paused(&self) {
        let mut state = self.state.lock().expect("vcpu control lock");
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            state = self.changed.wait(state).expect("vcpu control lock");
        }
        state.parked -= 1;
    }

    /// Pauses every vCPU and returns once all of them are parked.
    pub fn pause(&self, threads: &[JoinHandle<()>]) {
        let mut state = self.state.lock().expect("vcpu control lock");
        state.paused = true;
        drop(state);
        for thread in threads {
            if let Err(err) = thread.kill(kick_signal()) {
                tracing::warn!("kicking a vCPU: {err}");
            }
        }
        let mut state = self.state.lock().expect("vcpu control lock");
        while state.parked < threads.iter().filter(|t| !t.is_finished()).count() {
            state = self.changed.wait(state).expect("vcpu control lock");
        }
    }

    pub fn resume(&self) {
        self.state.lock().expect("vcpu control lock").paused = false;
        self.changed.notify_all();
    }
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
    pub instance_start: Instant,
    pub seccomp: Arc<SeccompFilters>,
}

impl Vcpu {
    /// Starts the vCPU's thread. It runs until the VM ends, then parks.
    /// Returns once the thread has installed its seccomp filter, so a
    /// filter that cannot be installed fails the start.
    pub fn start(self) -> Result<JoinHandle<()>, VmError> {
        install_kick_handler().map_err(|e| VmError::Thread(std::io::Error::from_raw_os_error(e.errno())))?;
        let (filtered, installed) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                let result = self.seccomp.apply(ThreadKind::Vcpu);
                let ok = result.is_ok();
                let _ = filtered.send(result);
                if ok {
                    self.run();
                }
            })
            .map_err(VmError::Thread)?;
        match installed.recv() {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(VmError::Thread(std::io::Error::other("the vCPU thread ended before it started"))),
        }
    }

    fn run(mut self) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        if self.id == 0 {
            let elapsed = self.instance_start.elapsed();
            METRICS.boot.first_vcpu_entry_us.add(elapsed.as_micros() as u64);
            tracing::info!("first vCPU entry {} us after InstanceStart", elapsed.as_micros());
        }
        loop {
            self.control.park_while_paused();
            if let Some(exit) = self.run_once() {
                self.exit.raise(exit);
                return;
            }
        }
    }

    /// One KVM_RUN; returns how the VM ended if it did.
    fn run_once(&mut self) -> Option<VmExit> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                METRICS.vcpu.exits_io_in.inc();
                if !self.io_bus.read(u64::from(port), data) {
                    METRICS.vcpu.unhandled_io.inc();
                    // An absent ISA device reads as all ones.
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                METRICS.vcpu.exits_io_out.inc();
                if !self.io_bus.write(u64::from(port), data) {
                    METRICS.vcpu.unhandled_io.inc();
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                METRICS.vcpu.exits_mmio_read.inc();
                if !self.mmio_bus.read(addr, data) {
                    METRICS.vcpu.unhandled_mmio.inc();
                    tracing::debug!("vcpu{}: read of unassigned MMIO {addr:#x}", self.id);
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                METRICS.vcpu.exits_mmio_write.inc();
                if !self.mmio_bus.write(addr, data) {
                    METRICS.vcpu.unhandled_mmio.inc();
                    tracing::debug!("vcpu{}: write of unassigned MMIO {addr:#x}", self.id);
                }
                None
            }
            Ok(VcpuExit::Shutdown) => Some(VmExit::Reset(ResetSource::TripleFault)),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(VmExit::Reset(ResetSource::SystemEvent(kind))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Some(self.failure(&format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})")))
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR the `internal` member of
                // the exit union is the one KVM filled.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Some(self.failure(&format!("KVM_EXIT_INTERNAL_ERROR (suberror {suberror})")))
            }
            Ok(VcpuExit::Hlt) => Some(self.failure("the vCPU halted with no interrupt that could wake it")),
            Ok(other) => {
                let reason = format!("unexpected exit {other:?}");
                Some(self.failure(&reason))
            }
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(err) => Some(self.failure(&format!("KVM_RUN failed: {err}"))),
        }
    }

    /// A vCPU failure with everything needed to tell why: the reason and
    /// the vCPU's registers.
    fn failure(&self, reason: &str) -> VmExit {
        METRICS.vcpu.failures.inc();
        let mut text = format!("vcpu{}: {reason}", self.id);
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => text.push_str(&format!(
                "; rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} \
                 cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}/{:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                s.cr0,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.cs.base
            )),
            (regs, sregs) => text.push_str(&format!("; registers unavailable ({:?}, {:?})", regs.err(), sregs.err())),
        }
        tracing::error!("{text}");
        VmExit::KvmFailure(text)
    }
}
