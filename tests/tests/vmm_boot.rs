//! husk-vmm boots the project's kernel and initramfs to the agent's ready
//! line under KVM in the test host: through the API socket with curl (as a
//! Firecracker user would) and through a Firecracker-format --config-file;
//! with two vCPUs the guest sees both; the guest's power-off ends the VMM
//! with status 0, and so does Ctrl-Alt-Del sent through the API.

mod common;

use common::{artifact, describe, ready_line, test_host};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::RunOutput;

const TIMEOUT_SECS: u64 = 300;
const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet nowatchdog nosoftlockup";

fn husk_vmm() -> String {
    paths::husk_vmm().unwrap_or_else(|e| panic!("{e}")).to_string_lossy().into_owned()
}

fn api_boot(vcpus: u8, agent_args: &str, after_ready: &str) -> RunOutput {
    let script = paths::repo_dir().join("tests/testhost/vmm-api-boot.sh");
    let env = [
        ("VMM", husk_vmm()),
        ("KERNEL", artifact("vmlinux").to_string_lossy().into_owned()),
        ("INITRD", artifact("initramfs.cpio").to_string_lossy().into_owned()),
        ("BOOT_ARGS", format!("{BOOT_ARGS} {agent_args}")),
        ("VCPUS", vcpus.to_string()),
        ("AFTER_READY", after_ready.to_owned()),
    ];
    let request = RunRequest {
        argv: vec![script.to_string_lossy().into_owned()],
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        timeout_secs: TIMEOUT_SECS,
        ..Default::default()
    };
    test_host().run(&request).expect("running the API boot in the test host")
}

#[test]
fn boots_through_the_api_and_power_off_ends_the_vmm_with_status_0() {
    let output = api_boot(1, "husk.ready_action=poweroff", "wait");
    assert_eq!(output.report.code, Some(0), "{}", describe(&output));
    let ready = ready_line(&output);
    assert_eq!(ready.cpus, Some(1));
    let stdout = output.stdout_text();
    assert!(stdout.contains("Guest-boot-time = "), "the boot timer logged the boot: {}", describe(&output));
    assert!(stdout.contains("the guest powered off with status 0"), "{}", describe(&output));
}

#[test]
fn two_vcpus_come_up_and_the_guest_sees_both() {
    let output = api_boot(2, "husk.ready_action=poweroff", "wait");
    assert_eq!(output.report.code, Some(0), "{}", describe(&output));
    assert_eq!(ready_line(&output).cpus, Some(2), "{}", describe(&output));
}

#[test]
fn ctrl_alt_del_through_the_api_ends_the_vmm() {
    let output = api_boot(1, "husk.ready_action=wait", "ctrl-alt-del");
    assert_eq!(output.report.code, Some(0), "{}", describe(&output));
    ready_line(&output);
    let stdout = output.stdout_text();
    // SIGINT is how the kernel hands Ctrl-Alt-Del to init.
    assert!(stdout.contains("husk-agent: signal 2: powering off"), "{}", describe(&output));
    assert!(stdout.contains("the guest powered off with status 0"), "{}", describe(&output));
}

#[test]
fn boots_from_a_firecracker_format_config_file() {
    let dir = paths::artifacts_dir().join("testhost/scratch");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("vm-config-{}.json", std::process::id()));
    let body = serde_json::json!({
        "boot-source": {
            "kernel_image_path": artifact("vmlinux"),
            "initrd_path": artifact("initramfs.cpio"),
            "boot_args": format!("{BOOT_ARGS} husk.ready_action=poweroff"),
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128, "smt": false },
        "drives": [],
        "network-interfaces": [],
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let request = RunRequest {
        argv: vec![husk_vmm(), "--no-api".into(), "--config-file".into(), config.to_string_lossy().into_owned()],
        timeout_secs: TIMEOUT_SECS,
        ..Default::default()
    };
    let output = test_host().run(&request).expect("running husk-vmm in the test host");
    std::fs::remove_file(&config).unwrap();
    assert_eq!(output.report.code, Some(0), "{}", describe(&output));
    assert_eq!(ready_line(&output).cpus, Some(1));
}

#[test]
fn boots_a_bzimage_through_its_64_bit_entry() {
    let vmm = paths::husk_vmm().unwrap_or_else(|e| panic!("{e}"));
    let dir = paths::artifacts_dir().join("testhost/scratch");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("vm-bzimage-{}.json", std::process::id()));
    let request = husk_tests::reference_vmm::husk_vmm(
        &vmm,
        &config,
        &artifact("bzImage"),
        &artifact("initramfs.cpio"),
        "husk.ready_action=poweroff",
        TIMEOUT_SECS,
    )
    .unwrap();
    let output = test_host().run(&request).expect("running husk-vmm in the test host");
    std::fs::remove_file(&config).unwrap();
    assert_eq!(output.report.code, Some(0), "{}", describe(&output));
    ready_line(&output);
    assert!(output.stderr_text().contains("booting through the 64-bit entry"), "{}", describe(&output));
}
