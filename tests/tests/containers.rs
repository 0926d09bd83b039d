//! OCI containers in a real microVM: husk-vmm boots the project's kernel and
//! initramfs in the test host, with the busybox image shared over
//! virtio-fs, and husk-container-suite drives the guest agent through
//! husk-runtime's client: stdio, env, users, exit codes, signals, exec, a
//! pty, a read-only rootfs, a volume, a 16 MiB stream, an OOM kill,
//! seccomp, and bad input.

mod common;

use common::{artifact, describe, test_host};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;

#[test]
fn the_agent_runs_oci_containers_in_a_microvm() {
    let vmm = paths::husk_vmm().unwrap_or_else(|e| panic!("{e}"));
    let probe = paths::guest_probe().unwrap_or_else(|e| panic!("{e}"));
    let arg = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let request = RunRequest {
        argv: vec![
            env!("CARGO_BIN_EXE_husk-container-suite").into(),
            "check".into(),
            "--vmm".into(),
            arg(vmm),
            "--kernel".into(),
            arg(artifact("vmlinux")),
            "--initrd".into(),
            arg(artifact("initramfs.cpio")),
            "--rootfs".into(),
            arg(artifact("images/busybox/rootfs")),
            "--probe".into(),
            arg(probe),
        ],
        timeout_secs: 600,
        ..Default::default()
    };
    let output = test_host().run(&request).expect("running the container suite in the test host");
    eprintln!("{}", output.stdout_text());
    assert!(output.report.success(), "the container suite failed: {}", describe(&output));
}
