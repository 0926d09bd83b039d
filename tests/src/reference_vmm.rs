//! QEMU's `microvm` machine as the reference VMM: boots the project's kernel
//! and initramfs the way husk-vmm will, so the guest side can be proven (and
//! later compared against) independently of husk's own VMM.

use std::path::Path;

use crate::protocol::RunRequest;

/// The guest command line every boot uses: a quiet serial console (each
/// console byte is a VM exit, costly when nested), no watchdogs (emulation is
/// slow enough to trip them), and a triple-fault reset on reboot, since QEMU's
/// microvm has no i8042 to reset through.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=t panic=-1 nowatchdog nosoftlockup";

/// A run request booting `kernel` (ELF vmlinux through its PVH note, or a
/// bzImage) with `initrd` under KVM in QEMU's microvm machine, its serial
/// console on stdout. `-no-reboot` makes the guest's reset end QEMU with
/// status 0.
pub fn qemu_microvm(kernel: &Path, initrd: &Path, extra_cmdline: &str, timeout_secs: u64) -> RunRequest {
    let argv = [
        "qemu-system-x86_64",
        // acpi=off: with ACPI on, QEMU 10 describes the virtio-mmio devices
        // in ACPI tables instead of on the command line.
        "-M",
        "microvm,acpi=off,rtc=off",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        &kernel.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        &format!("{BASE_CMDLINE} {extra_cmdline}"),
    ];
    RunRequest { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_secs, ..Default::default() }
}
