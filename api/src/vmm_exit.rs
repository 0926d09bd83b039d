//! `husk-vmm`'s exit statuses: how the process that is a microVM reports
//! how that VM ended. The OCI runtime reads them.

/// The guest ended itself: the agent powered off with status 0, or the
/// guest reset (i8042 `reboot=k`, triple fault `reboot=t`, KVM system event).
pub const GUEST_SHUTDOWN: u8 = 0;
/// The VMM failed: bad configuration or arguments, API socket, I/O. The
/// log says why.
pub const VMM_ERROR: u8 = 1;
/// The command line could not be parsed.
pub const USAGE: u8 = 2;
/// KVM or a vCPU failed (an exit the VMM cannot handle, KVM_RUN errors);
/// the log carries the exit reason and the vCPU's registers.
pub const KVM_FAILURE: u8 = 3;
/// A VMM thread made a system call its seccomp filter does not allow (a
/// compromised or buggy VMM); the process is ended at once and its stderr
/// and log say which thread and which call. (Not Firecracker's 148, which
/// here would read as the guest's power-off status 48.)
pub const SECCOMP: u8 = 4;
/// The guest agent powered off with a non-zero status `s`: the VMM exits
/// with `GUEST_FAILURE_BASE + s` (capped at 255).
pub const GUEST_FAILURE_BASE: u8 = 100;

/// The exit status for a guest power-off with `status`.
pub fn for_guest_power_off(status: u8) -> u8 {
    if status == 0 {
        GUEST_SHUTDOWN
    } else {
        GUEST_FAILURE_BASE.saturating_add(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_signal::{STATUS_AGENT_FAILED, STATUS_AGENT_PANICKED, STATUS_OK};

    #[test]
    fn guest_statuses_map_above_the_vmm_own() {
        assert_eq!(for_guest_power_off(STATUS_OK), 0);
        assert_eq!(for_guest_power_off(STATUS_AGENT_FAILED), 101);
        assert_eq!(for_guest_power_off(STATUS_AGENT_PANICKED), 102);
        assert_eq!(for_guest_power_off(255), 255);
    }
}
