//! husk-vmm on small guests the tests assemble themselves, run directly on
//! this machine's /dev/kvm: vCPU setup for both entry protocols, port and
//! MMIO exits, the serial device, i8042 reset, guest power-off, and how a
//! KVM failure is reported.

mod common;

use std::time::Duration;

use std::process::Command;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn long_mode_guest_prints_on_serial_and_resets_through_the_i8042() {
    require_kvm();
    let dir = scratch("long-mode");
    // EFER (0xc000_0080) bit 10 is LMA: print "LMA" only when it is set.
    let lma = Asm::new().print("LMA");
    let code = Asm::new()
        .print("hello from 64-bit\n")
        .rdmsr(0xc000_0080)
        .test_eax_jz(1 << 10, lma.len() as u8)
        .emit_all(&lma)
        .print("\n")
        .i8042_reset()
        .spin();
    let config = write_guest(&dir, &elf(&code.code, false), 1);
    let output = run_config(&config, &[], TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout, "hello from 64-bit\nLMA\n", "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("reset the machine through the i8042"));
}

#[test]
fn pvh_guest_enters_in_protected_mode_with_the_start_info_in_rbx() {
    require_kvm();
    let dir = scratch("pvh");
    let magic = Asm::new().print("magic ok\n");
    let code = Asm::new()
        .print("hello from PVH\n")
        .load_eax_from_ebx()
        .cmp_eax_jne(0x336e_c578, magic.len() as u8)
        .emit_all(&magic)
        .i8042_reset()
        .spin();
    let config = write_guest(&dir, &elf(&code.code, true), 1);
    let output = run_config(&config, &[], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from PVH\nmagic ok\n", "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PVH entry"), "{}", describe(&output));
}

#[test]
fn guest_power_off_ends_the_vmm_with_the_guest_status() {
    require_kvm();
    for (status, expected) in [(0u8, 0), (7, 107)] {
        let dir = scratch(&format!("poweroff-{status}"));
        let code = Asm::new().map_mmio_gap().print("bye\n").power_off(status).spin();
        let config = write_guest(&dir, &elf(&code.code, false), 1);
        let output = run_config(&config, &[], TIMEOUT);
        assert_eq!(output.status.code(), Some(expected), "{}", describe(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "bye\n");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&format!("powered off with status {status}")),
            "{}",
            describe(&output)
        );
    }
}

#[test]
fn unassigned_ports_read_as_all_ones_and_the_guest_goes_on() {
    require_kvm();
    let dir = scratch("unassigned");
    let ones = Asm::new().print("ff");
    let code = Asm::new()
        .mov_dx(0x80)
        .in_al_dx()
        .cmp_al_jne(0xff, ones.len() as u8)
        .emit_all(&ones)
        // A write nobody owns is dropped.
        .mov_dx(0x2f8)
        .mov_al(b'x')
        .out_dx_al()
        .print("\n")
        .i8042_reset()
        .spin();
    let config = write_guest(&dir, &elf(&code.code, false), 1);
    let output = run_config(&config, &[], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ff\n", "{}", describe(&output));
}

#[test]
fn a_kvm_failure_ends_the_vmm_with_the_exit_reason_and_registers() {
    require_kvm();
    let dir = scratch("kvm-failure");
    // Executing from MMIO is something KVM cannot do: the vCPU fails.
    let code = Asm::new().map_mmio_gap().print("jumping\n").mov_rax(GUEST_SIGNAL + 0x10).jmp_rax().spin();
    let config = write_guest(&dir, &elf(&code.code, false), 1);
    let output = run_config(&config, &[], TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(husk_api::vmm_exit::KVM_FAILURE.into()), "{}", describe(&output));
    assert!(stderr.contains("vcpu0: "), "{}", describe(&output));
    assert!(stderr.contains("rip="), "the registers are in the error: {}", describe(&output));
    assert!(stderr.contains("cr3=0x9000"), "{}", describe(&output));
}

#[test]
fn a_guest_that_triple_faults_ends_the_vmm() {
    require_kvm();
    let dir = scratch("triple-fault");
    // `ud2` with no IDT: #UD, then #DF, then a triple fault.
    let mut code = Asm::new().print("faulting\n");
    code.code.extend_from_slice(&[0x0f, 0x0b]);
    let config = write_guest(&dir, &elf(&code.code, false), 1);
    let output = run_config(&config, &[], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("TripleFault"), "{}", describe(&output));
}

#[test]
fn thirty_two_vcpus_and_memfd_backed_memory_boot() {
    require_kvm();
    let dir = scratch("many-vcpus");
    let code = Asm::new().print("32\n").i8042_reset().spin();
    let config = write_guest(&dir, &elf(&code.code, false), 32);
    let output = run_config(&config, &["--memfd"], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "32\n");
}

#[test]
fn a_missing_or_malformed_config_file_is_a_vmm_error_not_a_crash() {
    require_kvm();
    let dir = scratch("bad-config");
    let missing = dir.join("absent.json");
    let output = run_config(&missing, &[], TIMEOUT);
    assert_eq!(output.status.code(), Some(husk_api::vmm_exit::VMM_ERROR.into()), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent.json"), "{}", describe(&output));

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#).unwrap();
    let output = run_config(&bad, &[], TIMEOUT);
    assert_eq!(output.status.code(), Some(husk_api::vmm_exit::VMM_ERROR.into()), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("The kernel file cannot be opened"),
        "{}",
        describe(&output)
    );

    let output = Command::new(vmm_binary()).arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(husk_api::vmm_exit::USAGE.into()));
}

#[test]
fn the_console_can_go_to_a_fifo() {
    require_kvm();
    let dir = scratch("fifo");
    let fifo = dir.join("console.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path; mkfifo creates the node or fails.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let code = Asm::new().print("through the fifo\n").i8042_reset().spin();
    let config = write_guest(&dir, &elf(&code.code, false), 1);
    let output = run_config(&config, &["--serial-out", fifo.to_str().unwrap()], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "the console went to the FIFO, not stdout");
    assert_eq!(reader.join().unwrap(), b"through the fifo\n");
}
