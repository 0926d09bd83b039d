//! The project's guest kernel and initramfs boot to the agent's ready line
//! under KVM, in the test host, with QEMU's microvm as the VMM.

mod common;

use std::time::Duration;

use common::{artifact, describe, ready_line, test_host};
use husk_api::agent_console::ReadyLine;
use husk_tests::reference_vmm::qemu_microvm;

/// Generous: a nested boot takes ~5–15 s, more when the machine is busy.
const BOOT_TIMEOUT_SECS: u64 = 240;

fn boot_to_ready(kernel: &str) -> ReadyLine {
    let host = test_host();
    let request =
        qemu_microvm(&artifact(kernel), &artifact("initramfs.cpio"), "husk.ready_action=poweroff", BOOT_TIMEOUT_SECS);
    let output = host.run(&request).expect("running QEMU in the test host");
    let stdout = output.stdout_text();
    assert!(output.report.success(), "QEMU did not end cleanly on the guest's reset: {}", describe(&output));

    let ready = ready_line(&output);
    let printk = ready.printk.unwrap_or_else(|| panic!("the ready line lacks the printk time: {}", describe(&output)));
    // Both clocks started inside this run, so neither can exceed its wall time
    // as seen from here; and the kernel cannot boot in no time at all.
    for (clock, value) in [("uptime", ready.uptime), ("printk", printk)] {
        assert!(value > Duration::from_millis(10), "{clock} {value:?} is implausibly small: {}", describe(&output));
        assert!(value < output.elapsed, "{clock} {value:?} exceeds the run's wall time: {}", describe(&output));
    }
    assert!(!stdout.contains("Kernel panic"), "{}", describe(&output));
    eprintln!("{kernel}: agent ready at printk {printk:?} (uptime {:?}); run took {:?}", ready.uptime, output.elapsed);
    ready
}

#[test]
fn elf_vmlinux_boots_to_agent_ready_through_pvh() {
    boot_to_ready("vmlinux");
}

#[test]
fn bzimage_boots_to_agent_ready() {
    boot_to_ready("bzImage");
}

#[test]
fn a_bad_agent_option_powers_the_vm_off_instead_of_panicking_the_kernel() {
    let host = test_host();
    let request =
        qemu_microvm(&artifact("vmlinux"), &artifact("initramfs.cpio"), "husk.ready_action=explode", BOOT_TIMEOUT_SECS);
    let output = host.run(&request).expect("running QEMU in the test host");
    let stdout = output.stdout_text();
    assert!(output.report.success(), "the VM must end on the agent's reset: {}", describe(&output));
    assert!(
        stdout.contains("husk-agent: fatal: bad kernel command line option \"husk.ready_action=explode\""),
        "the console names the bad option: {}",
        describe(&output)
    );
    assert!(!stdout.contains("husk-agent: ready"), "{}", describe(&output));
    assert!(!stdout.contains("Kernel panic"), "PID 1 must not exit: {}", describe(&output));
}
