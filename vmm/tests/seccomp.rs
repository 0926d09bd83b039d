//! husk-vmm's threads under their seccomp filters: the API thread from its
//! start, the event loop from InstanceStart, every vCPU before its first
//! KVM_RUN; a guest then runs and the VMM serves its API as usual.
//! `--no-seccomp` leaves every thread unfiltered. Small guests on /dev/kvm.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Each thread's name and its `Seccomp:` mode (0 none, 2 filter) from
/// /proc/<pid>/task/*/status; the main thread is "main" (its comm is the
/// program's name).
fn seccomp_modes(pid: u32) -> BTreeMap<String, Vec<u32>> {
    let mut modes: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let field = |key: &str| {
            status.lines().find_map(|line| line.strip_prefix(key)).map(str::trim).unwrap_or_default().to_owned()
        };
        let name = if task.file_name().to_str() == Some(&pid.to_string()) { "main".into() } else { field("Name:") };
        let mode = field("Seccomp:").parse().unwrap_or_else(|_| panic!("no Seccomp: field in {status}"));
        modes.entry(name).or_default().push(mode);
    }
    modes
}

/// Threads named `name` exist and all run under a filter (mode 2).
fn all_filtered(modes: &BTreeMap<String, Vec<u32>>, name: &str) -> bool {
    modes.get(name).is_some_and(|threads| threads.iter().all(|&mode| mode == 2))
}

fn wait_for_console(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "the guest never printed on its console");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn configure(vmm: &ApiVmm, dir: &Path) {
    let kernel = dots_guest(dir);
    let boot = serde_json::json!({ "kernel_image_path": kernel, "boot_args": "console=ttyS0" }).to_string();
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot)).0, 204);
    assert_eq!(vmm.request("PUT", "/machine-config", Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#)).0, 204);
}

#[test]
fn every_thread_runs_under_its_filter_and_the_vm_serves_as_usual() {
    require_kvm();
    let dir = scratch("seccomp-on");
    let console = dir.join("console.log");
    let vmm = ApiVmm::start(&dir, &["--serial-out", console.to_str().unwrap(), "--level", "Debug"]);
    let pid = vmm.child.id();

    // Before InstanceStart: the API thread is filtered, the main thread
    // (still configuring: opening files, creating the VM) is not. The
    // socket is bound before the API thread is spawned, so the thread may
    // still be starting (named "husk-vmm", or "husk-api" before its filter
    // is in) for a moment; a connection thread carries the name "husk-api"
    // until it renames itself, under the inherited filter.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut modes = seccomp_modes(pid);
    while !all_filtered(&modes, "husk-api") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        modes = seccomp_modes(pid);
    }
    assert!(all_filtered(&modes, "husk-api"), "{modes:?}");
    assert_eq!(modes.get("main"), Some(&vec![0]), "{modes:?}");

    configure(&vmm, &dir);
    let metrics = dir.join("metrics.json");
    let body = serde_json::json!({ "metrics_path": metrics }).to_string();
    assert_eq!(vmm.request("PUT", "/metrics", Some(&body)).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    wait_for_console(&console);

    let modes = seccomp_modes(pid);
    assert_eq!(modes.get("main"), Some(&vec![2]), "the event loop: {modes:?}");
    assert!(all_filtered(&modes, "husk-api"), "{modes:?}");
    assert_eq!(modes.get("vcpu0"), Some(&vec![2]), "{modes:?}");
    assert_eq!(modes.get("vcpu1"), Some(&vec![2]), "{modes:?}");
    assert!(modes.values().flatten().all(|&mode| mode == 2), "an unfiltered thread: {modes:?}");

    // What stays allowed after boot goes on working, under the filters.
    assert_eq!(vmm.request("GET", "/", None).0, 200);
    assert_eq!(vmm.request("GET", "/vm/config", None).0, 200);
    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#)).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#)).0, 204);
    let (status, body) = vmm.request("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#));
    assert_eq!(status, 400, "{body}");
    // Connection threads (started by the filtered API thread) are filtered.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let socket = vmm.socket.clone();
            std::thread::spawn(move || http(&socket, "GET", "/machine-config", None).0)
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), 200);
    }
    assert!(std::fs::read_to_string(&metrics).unwrap().contains("utc_timestamp_ms"));
    let before = std::fs::metadata(&console).unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::fs::metadata(&console).unwrap().len() > before, "the guest stopped");
    let modes = seccomp_modes(pid);
    assert!(modes.values().flatten().all(|&mode| mode == 2), "an unfiltered thread: {modes:?}");

    let mut vmm = vmm;
    assert!(vmm.child.try_wait().unwrap().is_none(), "the VMM ended");
    let stderr = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap();
    assert!(!stderr.contains("seccomp: thread"), "{stderr}");
    assert!(stderr.contains("the vCPU filter is installed on thread \"vcpu1\""), "{stderr}");
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered_with_a_warning() {
    require_kvm();
    let dir = scratch("seccomp-off");
    let console = dir.join("console.log");
    let vmm = ApiVmm::start(&dir, &["--serial-out", console.to_str().unwrap(), "--no-seccomp"]);
    configure(&vmm, &dir);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    wait_for_console(&console);
    let modes = seccomp_modes(vmm.child.id());
    assert!(modes.contains_key("vcpu1"), "{modes:?}");
    assert!(modes.values().flatten().all(|&mode| mode == 0), "{modes:?}");
    let stderr = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap();
    assert!(stderr.contains("--no-seccomp"), "no warning: {stderr}");
}

#[test]
fn a_config_file_boot_filters_the_event_loop_and_the_guest_ends_the_vmm_normally() {
    require_kvm();
    let dir = scratch("seccomp-config-file");
    // Prints, powers off with status 7: the exit path (metrics flush,
    // process exit) runs under the event loop's filter.
    let code = Asm::new().map_mmio_gap().print("bye\n").power_off(7).spin();
    let config = write_guest(&dir, &elf(&code.code, false), 2);
    // The log at Debug, in a file: it names each filter installed.
    let log = dir.join("vmm.log");
    let mut body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    body["logger"] = serde_json::json!({ "log_path": log, "level": "Debug" });
    std::fs::write(&config, body.to_string()).unwrap();
    let output = run_config(&config, &[], Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(107), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "bye\n");
    let log = std::fs::read_to_string(&log).unwrap();
    for thread in ["main", "vcpu0", "vcpu1"] {
        assert!(log.contains(&format!("filter is installed on thread \"{thread}\"")), "{thread}: {log}");
    }
    assert!(!log.contains("seccomp: thread"), "{log}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("seccomp: thread"), "{}", describe(&output));
}
