//! virtio-vsock, virtio-fs and virtio-net in real microVMs: husk-vmm boots
//! the project's kernel with the test initramfs in the test host, and
//! husk-device-suite drives each device from the host side against
//! husk-guest-probe in the guest.

mod common;

use common::{artifact, describe, test_host};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;

/// One suite at a time: each boots VMs and pushes data through them, and
/// the nested test host has two emulated CPUs to share.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn suite(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let vmm = paths::husk_vmm().unwrap_or_else(|e| panic!("{e}"));
    let request = RunRequest {
        argv: vec![
            env!("CARGO_BIN_EXE_husk-device-suite").into(),
            name.into(),
            "--vmm".into(),
            vmm.to_string_lossy().into_owned(),
            "--kernel".into(),
            artifact("vmlinux").to_string_lossy().into_owned(),
            "--initrd".into(),
            artifact("initramfs-test.cpio").to_string_lossy().into_owned(),
        ],
        timeout_secs: 400,
        ..Default::default()
    };
    let output = test_host().run(&request).expect("running the device suite in the test host");
    eprintln!("{}", output.stdout_text());
    assert!(output.report.success(), "the {name} suite failed: {}", describe(&output));
}

#[test]
fn vsock_streams_both_ways_with_flow_control() {
    suite("vsock");
}

#[test]
fn virtio_fs_file_operations_read_only_shares_and_privilege_rules() {
    suite("fs");
}

#[test]
fn virtio_net_tcp_through_a_tap() {
    suite("net");
}
