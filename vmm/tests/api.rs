//! husk-vmm driven through its API socket, as a Firecracker user drives
//! Firecracker: configuration, start, pause/resume, and refusals of bad
//! input that leave the VMM serving. Small guests, directly on /dev/kvm.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

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

/// The `fault_message` of a 400, or a failure naming the request.
fn refused(vmm: &ApiVmm, method: &str, path: &str, body: &str) -> String {
    let (status, response) = vmm.request(method, path, Some(body));
    assert_eq!(status, 400, "{method} {path} {body}: {response}");
    let fault: serde_json::Value = serde_json::from_str(&response)
        .unwrap_or_else(|e| panic!("{method} {path}: the body is not JSON ({e}): {response}"));
    fault["fault_message"].as_str().unwrap_or_else(|| panic!("no fault_message: {response}")).to_owned()
}

fn vm_config(vmm: &ApiVmm) -> serde_json::Value {
    let (status, body) = vmm.request("GET", "/vm/config", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn device_sections(config: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "vsock": config["vsock"],
        "network-interfaces": config["network-interfaces"],
        "fs": config["fs"],
    })
}

/// Configures vsock, network interfaces and virtio-fs shares over the API,
/// with bodies good and bad: every refusal is a 400 naming the problem and
/// leaves the configuration as it was, and GET /vm/config reports exactly
/// what was accepted. Nothing is started, so this needs no devices (and no
/// KVM): the devices themselves are built at InstanceStart.
#[test]
fn device_configuration_through_the_api() {
    use serde_json::json;
    let dir = scratch("api-devices");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off"]);
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let share = share.to_str().unwrap().to_owned();
    let uds = dir.join("v.sock").to_str().unwrap().to_owned();

    // Nothing configured yet.
    let empty = json!({"vsock": null, "network-interfaces": [], "fs": []});
    assert_eq!(device_sections(&vm_config(&vmm)), empty);

    // vsock: a second PUT replaces the first.
    let vsock = json!({"guest_cid": 3, "uds_path": uds}).to_string();
    assert_eq!(vmm.request("PUT", "/vsock", Some(&vsock)), (204, String::new()));
    let vsock = json!({"guest_cid": 42, "uds_path": uds}).to_string();
    assert_eq!(vmm.request("PUT", "/vsock", Some(&vsock)).0, 204);

    // A network interface, its MAC given in upper case.
    let eth0 = json!({
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
        "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 100}},
    });
    assert_eq!(vmm.request("PUT", "/network-interfaces/eth0", Some(&eth0.to_string())).0, 204);
    // A share.
    let root = json!({"fs_id": "root", "tag": "rootfs", "shared_dir": share, "read_only": true});
    assert_eq!(vmm.request("PUT", "/fs/root", Some(&root.to_string())).0, 204);

    let accepted = json!({
        "vsock": {"guest_cid": 42, "uds_path": uds},
        "network-interfaces": [{
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
            "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 100}},
        }],
        "fs": [{
            "fs_id": "root", "tag": "rootfs", "shared_dir": share, "read_only": true, "cache": "auto",
            "allow_host_root": false, "root_uid": 65534, "root_gid": 65534,
        }],
    });
    assert_eq!(device_sections(&vm_config(&vmm)), accepted);

    let missing = dir.join("no-such-dir").to_str().unwrap().to_owned();
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let net =
        |id: &str, tap: &str, mac: &str| json!({"iface_id": id, "host_dev_name": tap, "guest_mac": mac}).to_string();
    let no_such_dir = format!("The shared directory {missing} does not exist.");
    let not_a_dir = format!("The shared directory {file} is not a directory.");
    let fs = |id: &str, tag: &str, dir: &str| json!({"fs_id": id, "tag": tag, "shared_dir": dir}).to_string();
    let refusals: Vec<(&str, String, &str)> = vec![
        // vsock
        (
            "/vsock",
            json!({"guest_cid": 2, "uds_path": uds}).to_string(),
            "guest_cid must be between 3 and 4294967295, got 2",
        ),
        ("/vsock", json!({"guest_cid": 0, "uds_path": uds}).to_string(), "guest_cid"),
        ("/vsock", json!({"guest_cid": 1u64 << 32, "uds_path": uds}).to_string(), "guest_cid"),
        ("/vsock", json!({"guest_cid": 3, "uds_path": ""}).to_string(), "uds_path must not be empty"),
        ("/vsock", json!({"guest_cid": 3, "uds_path": "/".repeat(108)}).to_string(), "shorter than 108 bytes"),
        ("/vsock", json!({"guest_cid": 3}).to_string(), "missing field `uds_path`"),
        // network interfaces
        (
            "/network-interfaces/eth1",
            net("eth0", "tap1", "06:00:ac:10:00:03"),
            "The id from the path [eth1] does not match the id from the body [eth0]!",
        ),
        (
            "/network-interfaces/eth-1",
            net("eth-1", "tap1", "06:00:ac:10:00:03"),
            "alphanumeric characters and underscores",
        ),
        ("/network-interfaces/", net("eth1", "tap1", "06:00:ac:10:00:03"), "The ID cannot be empty."),
        ("/network-interfaces/eth1", net("eth1", "tap1", "06:00:ac:10:00"), "\"06:00:ac:10:00\" is not a MAC address"),
        ("/network-interfaces/eth1", net("eth1", "tap1", "06-00-ac-10-00-03"), "is not a MAC address"),
        ("/network-interfaces/eth1", net("eth1", "tap1", "01:00:5e:00:00:01"), "multicast"),
        ("/network-interfaces/eth1", net("eth1", "tap1", "ff:ff:ff:ff:ff:ff"), "multicast"),
        ("/network-interfaces/eth1", net("eth1", "", "06:00:ac:10:00:03"), "host_dev_name must be 1 to 15 bytes"),
        (
            "/network-interfaces/eth1",
            net("eth1", "a-very-long-tap0", "06:00:ac:10:00:03"),
            "host_dev_name must be 1 to 15 bytes",
        ),
        ("/network-interfaces/eth1", net("eth1", "tap/1", "06:00:ac:10:00:03"), "not a valid interface name"),
        (
            "/network-interfaces/eth1",
            net("eth1", "tap0", "06:00:ac:10:00:03"),
            "The host device name tap0 is already in use by network interface eth0.",
        ),
        (
            "/network-interfaces/eth1",
            net("eth1", "tap1", "06:00:Ac:10:00:02"),
            "The guest MAC address 06:00:ac:10:00:02 is already in use by network interface eth0.",
        ),
        (
            "/network-interfaces/eth1",
            json!({"iface_id": "eth1", "host_dev_name": "tap1",
                   "tx_rate_limiter": {"ops": {"size": 100, "refill_time": 0}}})
            .to_string(),
            "tx_rate_limiter.ops: refill_time must be at least 1 ms",
        ),
        (
            "/network-interfaces/eth1",
            json!({"iface_id": "eth1", "host_dev_name": "tap1", "mtu": 9000}).to_string(),
            "unknown field `mtu`",
        ),
        // virtio-fs shares
        (
            "/fs/data",
            fs("root", "data", &share),
            "The id from the path [data] does not match the id from the body [root]!",
        ),
        ("/fs/data", fs("data", "rootfs", &share), "The mount tag \"rootfs\" is already used by file system root."),
        ("/fs/data", fs("data", "", &share), "tag must be 1 to 36 bytes"),
        ("/fs/data", fs("data", &"t".repeat(37), &share), "tag must be 1 to 36 bytes"),
        ("/fs/data", fs("data", "data", &missing), &no_such_dir),
        ("/fs/data", fs("data", "data", &file), &not_a_dir),
        ("/fs/data", fs("data", "data", ""), "shared_dir must not be empty"),
        ("/fs/data.1", fs("data.1", "data", &share), "alphanumeric characters and underscores"),
        (
            "/fs/data",
            json!({"fs_id": "data", "tag": "data", "shared_dir": share, "cache": "sometimes"}).to_string(),
            "unknown variant `sometimes`",
        ),
    ];
    for (path, body, expect) in &refusals {
        let message = refused(&vmm, "PUT", path, body);
        assert!(message.contains(expect), "PUT {path} {body}: {message:?} should contain {expect:?}");
        // Nothing changed, and the VMM still answers.
        assert_eq!(device_sections(&vm_config(&vmm)), accepted, "after PUT {path} {body}");
    }
    // A refused replacement leaves the device as it was, too.
    let message = refused(&vmm, "PUT", "/fs/root", &fs("root", "rootfs", &missing));
    assert!(message.contains("does not exist"), "{message}");
    refused(&vmm, "PUT", "/network-interfaces/eth0", &net("eth0", "tap0", "01:00:00:00:00:01"));
    assert_eq!(device_sections(&vm_config(&vmm)), accepted);

    // A PUT of a configured id replaces that device in its place; a TAP
    // or tag it had is free for the new version to keep.
    assert_eq!(vmm.request("PUT", "/network-interfaces/eth1", Some(&net("eth1", "tap1", "06:00:ac:10:00:03"))).0, 204);
    assert_eq!(vmm.request("PUT", "/network-interfaces/eth0", Some(&net("eth0", "tap0", "06:00:ac:10:00:04"))).0, 204);
    assert_eq!(vmm.request("PUT", "/fs/root", Some(&fs("root", "rootfs", &share))).0, 204);
    let config = vm_config(&vmm);
    assert_eq!(
        config["network-interfaces"],
        json!([
            {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:04"},
            {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:ac:10:00:03"},
        ])
    );
    assert_eq!(
        config["fs"],
        json!([{
            "fs_id": "root", "tag": "rootfs", "shared_dir": share, "read_only": false, "cache": "auto",
            "allow_host_root": false, "root_uid": 65534, "root_gid": 65534,
        }])
    );
    // The old MAC of eth0 is free again.
    assert_eq!(vmm.request("PUT", "/network-interfaces/eth2", Some(&net("eth2", "tap2", "06:00:ac:10:00:02"))).0, 204);

    // At most 19 virtio devices: vsock, 3 interfaces, root and 14 more shares fill them.
    for n in 0..14 {
        let id = format!("share{n}");
        assert_eq!(vmm.request("PUT", &format!("/fs/{id}"), Some(&fs(&id, &id, &share))).0, 204, "{id}");
    }
    let message = refused(&vmm, "PUT", "/fs/one_more", &fs("one_more", "one_more", &share));
    assert!(message.contains("at most 19 virtio devices") && message.contains("19 are configured"), "{message}");
    let message = refused(&vmm, "PUT", "/network-interfaces/eth9", &net("eth9", "tap9", "06:00:ac:10:00:09"));
    assert!(message.contains("Cannot add network interface eth9: a microVM has at most 19"), "{message}");
    // Replacing one of them is not adding one.
    assert_eq!(vmm.request("PUT", "/fs/share3", Some(&fs("share3", "share3", &share))).0, 204);
    assert_eq!(vmm.request("PUT", "/vsock", Some(&json!({"guest_cid": 7, "uds_path": uds}).to_string())).0, 204);
    let config = vm_config(&vmm);
    assert_eq!(config["fs"].as_array().unwrap().len(), 15);
    assert_eq!(config["network-interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(config["vsock"], json!({"guest_cid": 7, "uds_path": uds}));
    assert_eq!(state(&vmm), "Not started");
}

/// Devices are configured before boot only: after InstanceStart every PUT
/// is refused, and the (empty) device configuration stays as it was. The VM
/// is started without devices, so this does not depend on them.
#[test]
fn device_configuration_is_refused_after_start() {
    require_kvm();
    let dir = scratch("api-devices-after-start");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off"]);
    let share = dir.to_str().unwrap().to_owned();
    let kernel = dots_guest(&dir);
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot_source(&kernel))).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    assert_eq!(state(&vmm), "Running");

    let uds = dir.join("v.sock").to_str().unwrap().to_owned();
    let requests = [
        ("/vsock", serde_json::json!({"guest_cid": 3, "uds_path": uds})),
        ("/network-interfaces/eth0", serde_json::json!({"iface_id": "eth0", "host_dev_name": "tap0"})),
        ("/fs/root", serde_json::json!({"fs_id": "root", "tag": "rootfs", "shared_dir": share})),
    ];
    for (path, body) in &requests {
        let message = refused(&vmm, "PUT", path, &body.to_string());
        assert_eq!(message, "The requested operation is not supported after starting the microVM.", "PUT {path}");
    }
    let empty = serde_json::json!({"vsock": null, "network-interfaces": [], "fs": []});
    assert_eq!(device_sections(&vm_config(&vmm)), empty);

    // Paused is still after start.
    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    let message = refused(&vmm, "PUT", "/vsock", &requests[0].1.to_string());
    assert!(message.contains("after starting the microVM"), "{message}");
    assert_eq!(state(&vmm), "Paused");
}

/// A config file's device sections go through the same checks as the API's
/// requests, and a bad one stops the VMM before anything boots, with a
/// message naming the section and the device.
#[test]
fn config_file_device_sections_are_checked_like_the_api() {
    let dir = scratch("config-devices");
    let kernel = dots_guest(&dir);
    let share = dir.to_str().unwrap().to_owned();
    let uds = dir.join("v.sock").to_str().unwrap().to_owned();
    let base = serde_json::json!({"boot-source": {"kernel_image_path": kernel}});
    let cases = [
        (
            serde_json::json!({"vsock": {"guest_cid": 2, "uds_path": uds}}),
            "\"vsock\": Invalid vsock configuration: guest_cid",
        ),
        (
            serde_json::json!({"network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0"},
                {"iface_id": "eth1", "host_dev_name": "tap0"},
            ]}),
            "\"network-interfaces\" (iface_id \"eth1\"): The host device name tap0 is already in use",
        ),
        (
            serde_json::json!({"network-interfaces": [{"iface_id": "eth-0", "host_dev_name": "tap0"}]}),
            "Invalid iface_id \"eth-0\"",
        ),
        (
            serde_json::json!({"network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0"},
                {"iface_id": "eth0", "host_dev_name": "tap1"},
            ]}),
            "\"network-interfaces\": iface_id \"eth0\" appears more than once",
        ),
        (
            serde_json::json!({"fs": [
                {"fs_id": "a", "tag": "same", "shared_dir": share},
                {"fs_id": "b", "tag": "same", "shared_dir": share},
            ]}),
            "\"fs\" (fs_id \"b\"): The mount tag \"same\" is already used by file system a.",
        ),
        (
            serde_json::json!({"fs": [{"fs_id": "a", "tag": "a", "shared_dir": format!("{share}/missing")}]}),
            "does not exist",
        ),
    ];
    for (n, (devices, expect)) in cases.iter().enumerate() {
        let mut config = base.clone();
        config.as_object_mut().unwrap().extend(devices.as_object().unwrap().clone());
        let path = dir.join(format!("vm{n}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let output = run_config(&path, &["--serial-out", "off"], Duration::from_secs(30));
        assert_eq!(
            output.status.code(),
            Some(husk_api::vmm_exit::VMM_ERROR.into()),
            "{devices}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{devices}: should mention {expect:?}\n{}", describe(&output));
    }
}
