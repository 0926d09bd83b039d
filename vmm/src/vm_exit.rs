//! Why a VM ended, raised by whichever thread sees it first (a vCPU, a
//! device) and collected by the VMM's event loop, which ends the process.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// What reset the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The i8042 reset line (`reboot=k`).
    I8042,
    /// A triple fault (`reboot=t`), seen as KVM_EXIT_SHUTDOWN.
    TripleFault,
    /// A KVM system event (e.g. a PSCI-style reset or shutdown).
    SystemEvent(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The agent powered the VM off through the guest-signal register.
    PowerOff {
        status: u8,
    },
    Reset(ResetSource),
    /// KVM or a vCPU failed: the message carries the exit reason and the
    /// vCPU's registers.
    KvmFailure(String),
}

pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    event: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { reason: Mutex::new(None), event: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// Records `exit` unless an earlier one was recorded (a power-off write
    /// followed by the reset that backs it up keeps the power-off), and
    /// wakes the event loop.
    pub fn raise(&self, exit: VmExit) {
        let mut reason = self.reason.lock().expect("exit lock");
        if reason.is_none() {
            *reason = Some(exit);
        }
        if let Err(err) = self.event.write(1) {
            tracing::error!("waking the VMM for a VM exit: {err}");
        }
    }

    pub fn reason(&self) -> Option<VmExit> {
        self.reason.lock().expect("exit lock").clone()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_wins() {
        let signal = ExitSignal::new().unwrap();
        assert_eq!(signal.reason(), None);
        signal.raise(VmExit::PowerOff { status: 3 });
        signal.raise(VmExit::Reset(ResetSource::I8042));
        assert_eq!(signal.reason(), Some(VmExit::PowerOff { status: 3 }));
        assert_eq!(signal.event().read().unwrap(), 2);
    }
}
