//! The guest-signal MMIO register: how the guest agent tells the VMM about
//! boot and shutdown without ACPI or any virtio device.
//!
//! The register is one page of MMIO at [`GUEST_SIGNAL_MMIO_BASE`]. The guest
//! writes single bytes to it (through `/dev/mem`):
//!
//! | offset | byte written | meaning |
//! |---|---|---|
//! | [`BOOT_COMPLETE_OFFSET`] (0) | [`BOOT_COMPLETE_MAGIC`] (123) | the agent is up: the VMM logs the time since `InstanceStart` (the boot timer) |
//! | [`POWER_OFF_OFFSET`] (1) | the guest's exit status, 0–255 | the agent is powering the VM off: the VMM ends the VM and reports the status |
//!
//! Offset 0 and value 123 at `0xd000_0000` are the ones Firecracker's boot
//! timer uses, so guest images built for Firecracker's boot timer also work
//! with husk. The power-off register is husk's own: without ACPI, the guest
//! kernel's `reboot(RB_POWER_OFF)` only halts the CPUs, which a VMM cannot tell
//! apart from an idle guest. After writing it the agent still resets the
//! machine (`reboot=k` i8042 reset or `reboot=t` triple fault), so a VMM that
//! does not implement the register (QEMU's microvm, Firecracker) also stops.
//!
//! Any other offset, width or value is ignored by the VMM.

/// Guest-physical address of the guest-signal register page.
pub const GUEST_SIGNAL_MMIO_BASE: u64 = 0xd000_0000;

/// Size of the MMIO region the VMM reserves for the register.
pub const GUEST_SIGNAL_MMIO_SIZE: u64 = 0x1000;

/// Offset of the boot-complete byte.
pub const BOOT_COMPLETE_OFFSET: u64 = 0;

/// Value written at [`BOOT_COMPLETE_OFFSET`] when the agent is ready.
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// Offset of the power-off byte; the value written is the guest's exit status.
pub const POWER_OFF_OFFSET: u64 = 1;

/// Power-off status: the guest shut down as asked.
pub const STATUS_OK: u8 = 0;

/// Power-off status: the agent could not set the guest up (its console says why).
pub const STATUS_AGENT_FAILED: u8 = 1;

/// Power-off status: the agent panicked (its console has the panic message).
pub const STATUS_AGENT_PANICKED: u8 = 2;

/// A write the guest made to the register, as the VMM should interpret it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSignal {
    /// The agent finished booting.
    BootComplete,
    /// The agent powers the VM off with this exit status.
    PowerOff { status: u8 },
}

impl GuestSignal {
    /// Decodes a write of `data` at `offset` into the register page. Returns
    /// `None` for anything the contract does not define (wrong width, offset
    /// or magic), which the VMM must ignore.
    pub fn decode(offset: u64, data: &[u8]) -> Option<Self> {
        match (offset, data) {
            (BOOT_COMPLETE_OFFSET, [BOOT_COMPLETE_MAGIC]) => Some(Self::BootComplete),
            (POWER_OFF_OFFSET, [status]) => Some(Self::PowerOff { status: *status }),
            _ => None,
        }
    }

    /// The `(offset, byte)` write the guest makes to send this signal.
    pub fn encode(self) -> (u64, u8) {
        match self {
            Self::BootComplete => (BOOT_COMPLETE_OFFSET, BOOT_COMPLETE_MAGIC),
            Self::PowerOff { status } => (POWER_OFF_OFFSET, status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        for signal in
            [GuestSignal::BootComplete, GuestSignal::PowerOff { status: 0 }, GuestSignal::PowerOff { status: 255 }]
        {
            let (offset, byte) = signal.encode();
            assert_eq!(GuestSignal::decode(offset, &[byte]), Some(signal));
        }
    }

    #[test]
    fn undefined_writes_are_ignored() {
        // Wrong magic at the boot-complete offset.
        assert_eq!(GuestSignal::decode(BOOT_COMPLETE_OFFSET, &[124]), None);
        // Wider than a byte.
        assert_eq!(GuestSignal::decode(BOOT_COMPLETE_OFFSET, &[123, 0]), None);
        assert_eq!(GuestSignal::decode(POWER_OFF_OFFSET, &[0, 0, 0, 0]), None);
        // Empty and out-of-contract offsets.
        assert_eq!(GuestSignal::decode(POWER_OFF_OFFSET, &[]), None);
        assert_eq!(GuestSignal::decode(2, &[0]), None);
        assert_eq!(GuestSignal::decode(GUEST_SIGNAL_MMIO_SIZE, &[123]), None);
    }

    #[test]
    fn boot_complete_matches_firecracker_boot_timer() {
        // Guest images that signal Firecracker's boot timer must work unchanged.
        assert_eq!(GUEST_SIGNAL_MMIO_BASE, 0xd000_0000);
        assert_eq!(GuestSignal::BootComplete.encode(), (0, 123));
    }
}
