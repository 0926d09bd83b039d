//! The test host itself: it runs programs with their output and status, and
//! it is a machine where KVM boots a stock kernel.

mod common;

use common::{describe, test_host};
use husk_tests::protocol::RunRequest;

fn sh(script: &str, timeout_secs: u64) -> RunRequest {
    RunRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello from the test host".into())],
        timeout_secs,
        ..Default::default()
    }
}

#[test]
fn the_test_host_has_kvm_that_boots_linux() {
    let info = test_host().info().expect("asking the test host what it is");
    assert_eq!(info.kvm, "hardware", "the test host must offer kvm_intel/kvm_amd: {info:?}");
}

#[test]
fn programs_run_with_their_output_environment_and_status() {
    let output = test_host().run(&sh("echo $GREETING; echo oops >&2; test -c /dev/kvm && exit 7", 120)).unwrap();
    assert_eq!(output.report.code, Some(7), "{}", describe(&output));
    assert_eq!(output.stdout_text(), "hello from the test host\n");
    assert_eq!(output.stderr_text(), "oops\n");
}

#[test]
fn a_program_over_its_time_is_killed_and_reported() {
    let output = test_host().run(&sh("sleep 600", 2)).unwrap();
    assert!(output.report.timed_out, "{}", describe(&output));
    assert!(!output.report.success());
}

#[test]
fn the_repository_is_shared_read_write_at_its_own_path() {
    let dir = husk_tests::paths::artifacts_dir().join("testhost/scratch");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("written-inside-{}", std::process::id()));
    let script = format!("echo written-in-the-test-host > {}", file.display());
    let output = test_host().run(&sh(&script, 120)).unwrap();
    assert!(output.report.success(), "{}", describe(&output));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "written-in-the-test-host\n");
    std::fs::remove_file(file).unwrap();
}
