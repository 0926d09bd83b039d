//! podman and containerd, unchanged, running containers through an OCI
//! runtime in the test host: husk, one microVM per container (issue #6), and
//! crun, the baseline that proves the environment (podman with cgroupfs,
//! overlay storage and netavark bridge networks; containerd with its runc
//! shim). husk-engine-suite does the work; its `ok:` lines name each check.
//!
//! Measured in the nested test host (a loaded 2-core machine): the crun
//! baseline takes 1.5–2 min, husk's podman checks 3–5 min (a VM per
//! container) and its containerd checks about 1 min. The runc baseline is on
//! demand (`-- --ignored`).

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use common::{artifact, describe, test_host};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;

/// One suite at a time: they share the test host's podman bridge, the
/// published port and the runtimes' root directories. (The suite also
/// takes a lock in the test host, against other test processes.)
static SERIAL: Mutex<()> = Mutex::new(());

/// The husk CLI the engines call: `HUSK_BIN`, else the workspace's debug build.
fn husk_cli() -> String {
    let path = match std::env::var_os("HUSK_BIN") {
        Some(path) => PathBuf::from(path),
        None => paths::repo_dir().join("target/debug/husk"),
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p husk-runtime` (or set HUSK_BIN)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn engine_suite(args: &[&str], timeout_secs: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let images = artifact("images/busybox");
    let engines = images.join("engines");
    for file in ["rootfs.tar", "oci.tar"] {
        assert!(
            engines.join(file).is_file(),
            "{} is missing: build it with `images/build-engine-images.sh` (scripts/test.sh runs every step)",
            engines.join(file).display()
        );
    }
    let mut argv: Vec<String> = vec![env!("CARGO_BIN_EXE_husk-engine-suite").into()];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    argv.extend(["--images".into(), engines.to_string_lossy().into_owned()]);
    argv.extend(["--rootfs".into(), images.join("rootfs").to_string_lossy().into_owned()]);
    let request = RunRequest { argv, timeout_secs, ..Default::default() };
    let output = test_host().run(&request).expect("running the engine suite in the test host");
    eprintln!(
        "{}husk-engine-suite {}: {:.0} s",
        output.stdout_text(),
        args.iter().take(3).copied().collect::<Vec<_>>().join(" "),
        output.elapsed.as_secs_f64()
    );
    assert!(output.report.success(), "the engine suite ({}) failed: {}", args.join(" "), describe(&output));
}

#[test]
fn podman_runs_containers_in_husk_microvms() {
    let husk = husk_cli();
    engine_suite(&["podman", "--runtime", "husk", "--husk", &husk], 900);
}

#[test]
fn containerd_runs_containers_in_husk_microvms() {
    let husk = husk_cli();
    engine_suite(&["containerd", "--runtime", "husk", "--husk", &husk], 600);
}

#[test]
fn podman_and_containerd_work_with_crun_in_the_test_host() {
    engine_suite(&["all", "--runtime", "crun"], 600);
}

#[test]
#[ignore = "a second baseline, on demand: crun's test already proves the environment"]
fn podman_and_containerd_work_with_runc_in_the_test_host() {
    engine_suite(&["all", "--runtime", "runc"], 600);
}
