//! Booting the project's kernel and initramfs in a VMM: husk-vmm, or QEMU's
//! `microvm` machine as the reference VMM, so the guest side can be proven
//! and compared independently of husk's own VMM.

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

/// The command line husk-vmm boots the guest with in tests and the demo: as
/// [`BASE_CMDLINE`], but resetting through husk-vmm's i8042 (`reboot=k`)
/// and without probing PS/2 hardware the microVM does not have.
pub const HUSK_CMDLINE: &str =
    "console=ttyS0 quiet reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd nowatchdog nosoftlockup";

/// A run request booting `kernel` with `initrd` in husk-vmm from a
/// Firecracker-format configuration file, written to `config_path` (a path
/// the test host sees), with the boot timer on and the log on stderr.
pub fn husk_vmm(
    vmm: &Path,
    config_path: &Path,
    kernel: &Path,
    initrd: &Path,
    extra_cmdline: &str,
    timeout_secs: u64,
) -> std::io::Result<RunRequest> {
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": format!("{HUSK_CMDLINE} {extra_cmdline}"),
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
    });
    std::fs::write(config_path, config.to_string())?;
    let argv = [
        &vmm.to_string_lossy(),
        "--no-api",
        "--config-file",
        &config_path.to_string_lossy(),
        "--boot-timer",
        "--level",
        "Info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Ok(RunRequest { argv, timeout_secs, ..Default::default() })
}
