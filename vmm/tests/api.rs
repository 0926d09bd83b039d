//! husk-vmm driven through its API socket, as a Firecracker user drives
//! Firecracker: configuration, start, pause/resume, and refusals of bad
//! input that leave the VMM serving. Small guests, directly on /dev/kvm.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A guest printing dots on the console forever.
fn dots_guest(dir: &Path) -> String {
    let body = Asm::new().mov_dx(COM1).mov_al(b'.').out_dx_al().delay(2000);
    let code = body.clone().jmp_back(body.len());
    let kernel = dir.join("dots.elf");
    std::fs::write(&kernel, elf(&code.code, false)).unwrap();
    kernel.to_string_lossy().into_owned()
}

fn boot_source(kernel: &str) -> String {
    serde_json::json!({ "kernel_image_path": kernel, "boot_args": "console=ttyS0" }).to_string()
}

fn state(vmm: &ApiVmm) -> String {
    let (status, body) = vmm.request("GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["app_name"], "husk");
    info["state"].as_str().unwrap().to_owned()
}

fn console_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn wait_for_growth(path: &Path, from: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let len = console_len(path);
        if len > from {
            return len;
        }
        assert!(Instant::now() < deadline, "the guest's console did not grow past {from} bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn configure_start_pause_resume_through_the_api() {
    require_kvm();
    let dir = scratch("api-lifecycle");
    let console = dir.join("console.log");
    let vmm = ApiVmm::start(&dir, &["--serial-out", console.to_str().unwrap(), "--id", "lifecycle"]);
    assert_eq!(state(&vmm), "Not started");

    let kernel = dots_guest(&dir);
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot_source(&kernel))), (204, String::new()));
    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 64}"#;
    assert_eq!(vmm.request("PUT", "/machine-config", Some(machine)).0, 204);
    assert_eq!(vmm.request("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 96}"#)).0, 204);
    let (status, body) = vmm.request("GET", "/machine-config", None);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((config["vcpu_count"].as_u64(), config["mem_size_mib"].as_u64()), (Some(2), Some(96)));

    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    assert_eq!(state(&vmm), "Running");
    let running = wait_for_growth(&console, 0);

    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    assert_eq!(state(&vmm), "Paused");
    // Paused: whatever was in flight lands, then nothing more.
    std::thread::sleep(Duration::from_millis(100));
    let paused = console_len(&console);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(console_len(&console), paused, "the guest ran while paused");
    assert!(paused >= running);

    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0, 204);
    assert_eq!(state(&vmm), "Running");
    wait_for_growth(&console, paused);

    let (status, body) = vmm.request("GET", "/vm/config", None);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(config["machine-config"]["mem_size_mib"], 96);
}

#[test]
fn bad_input_is_refused_with_a_precise_fault_and_the_vmm_keeps_serving() {
    require_kvm();
    let dir = scratch("api-bad-input");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off"]);
    let kernel = dots_guest(&dir);
    let missing = dir.join("no-such-kernel").to_string_lossy().into_owned();

    let refusals: &[(&str, &str, String, &str)] = &[
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": "#.into(), "EOF"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 64, "gpu": true}"#.into(), "gpu"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 64}"#.into(), "vcpu_count"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 33, "mem_size_mib": 64}"#.into(), "vcpu_count"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 0}"#.into(), "mem_size_mib"),
        ("PUT", "/boot-source", boot_source(&missing), "The kernel file cannot be opened"),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#.into(), "without kernel configuration"),
        ("PUT", "/actions", r#"{"action_type": "Reboot"}"#.into(), "Reboot"),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#.into(), "before starting the microVM"),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#.into(), "before starting the microVM"),
        ("GET", "/no-such-path", String::new(), "no-such-path"),
    ];
    for (method, path, body, expect) in refusals {
        let (status, response) = vmm.request(method, path, Some(body));
        assert_eq!(status, 400, "{method} {path} {body}: {response}");
        let fault: serde_json::Value = serde_json::from_str(&response)
            .unwrap_or_else(|e| panic!("{method} {path}: the body is not JSON ({e}): {response}"));
        let message = fault["fault_message"].as_str().unwrap_or_else(|| panic!("no fault_message: {response}"));
        assert!(message.contains(expect), "{method} {path} {body}: {message:?} should mention {expect:?}");
        // Nothing changed and the VMM still answers.
        assert_eq!(state(&vmm), "Not started");
    }

    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot_source(&kernel))).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    let after_start: &[(&str, &str, String, &str)] = &[
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#.into(), "after starting the microVM"),
        ("PUT", "/boot-source", boot_source(&kernel), "after starting the microVM"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.into(), "after starting the microVM"),
        ("PUT", "/logger", format!(r#"{{"log_path": "{}/log"}}"#, dir.display()), "after starting the microVM"),
    ];
    for (method, path, body, expect) in after_start {
        let (status, response) = vmm.request(method, path, Some(body));
        assert_eq!(status, 400, "{method} {path}: {response}");
        assert!(response.contains(expect), "{method} {path}: {response}");
        assert_eq!(state(&vmm), "Running");
    }
}

#[test]
fn logger_and_metrics_write_where_they_are_pointed() {
    require_kvm();
    let dir = scratch("api-logger-metrics");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off", "--id", "observed"]);
    let log = dir.join("vmm.log");
    let metrics = dir.join("metrics.json");
    let logger = serde_json::json!({ "log_path": log, "level": "Info", "show_level": true });
    assert_eq!(vmm.request("PUT", "/logger", Some(&logger.to_string())).0, 204);
    assert_eq!(
        vmm.request("PUT", "/metrics", Some(&serde_json::json!({ "metrics_path": metrics }).to_string())).0,
        204
    );
    let kernel = dots_guest(&dir);
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot_source(&kernel))).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#)).0, 204);

    let line = std::fs::read_to_string(&metrics).unwrap();
    let flushed: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert!(flushed["vcpu"]["exits_io_out"].as_u64().unwrap() > 0, "{flushed}");
    assert!(flushed["api"]["requests"].as_u64().unwrap() >= 4, "{flushed}");
    assert!(flushed["utc_timestamp_ms"].as_u64().unwrap() > 0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("[observed:") && log.contains(":INFO] first vCPU entry"), "{log}");
}
