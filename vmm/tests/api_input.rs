//! Malformed API input, table-driven: every request in the tables is
//! refused with Firecracker's status (400, with a `fault_message` naming the
//! problem), and leaves the VMM's configuration exactly as it was: GET
//! /vm/config, GET /machine-config and GET / read the same before and after
//! each one. The tables cover every documented (method, path), unknown paths
//! and methods, the HTTP layer (Content-Length, chunked bodies, oversize
//! bodies and heads, non-UTF-8), JSON shape (types, unknown fields, missing
//! fields, out-of-range numbers), values the VMM checks (files that do not
//! exist or are not regular files), and the pre-boot/post-boot rules.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One raw request on a fresh connection; the status and the body of the
/// response (the server may close the connection after it).
fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connecting to the API socket");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before reading all of an oversize
    // request: a failed write is not the test's concern, the answer is.
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned());
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed before a full response: {:?}", String::from_utf8_lossy(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the response: {e}; so far {:?}", String::from_utf8_lossy(&buf)),
        }
    }
}

/// A request with a correct Content-Length, kept alive (so a server that
/// closed it would also fail the read).
fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What the API says the VMM's configuration and state are.
fn snapshot(vmm: &ApiVmm) -> Value {
    let mut all = json!({});
    for path in ["/vm/config", "/machine-config", "/"] {
        let (status, body) = vmm.request("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        all[path] = serde_json::from_str(&body).unwrap();
    }
    all
}

/// Sends each refused request and checks the answer and that nothing changed.
fn check_refusals(vmm: &ApiVmm, cases: &[(Vec<u8>, &str)]) -> usize {
    let before = snapshot(vmm);
    let mut failures = Vec::new();
    for (bytes, expect) in cases {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]).into_owned();
        let (status, body) = raw(&vmm.socket, bytes);
        let message =
            serde_json::from_str::<Value>(&body).ok().and_then(|v| v["fault_message"].as_str().map(str::to_owned));
        match message {
            _ if status != 400 => failures.push(format!("{shown:?}: status {status}, not 400: {body}")),
            None => failures.push(format!("{shown:?}: no fault_message in {body:?}")),
            Some(message) if !message.contains(expect) => {
                failures.push(format!("{shown:?}: {message:?} should contain {expect:?}"))
            }
            Some(_) => {}
        }
        let after = snapshot(vmm);
        if after != before {
            failures.push(format!("{shown:?} changed the configuration:\nbefore {before}\nafter  {after}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} refusals failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

fn put(path: &str, body: Value) -> Vec<u8> {
    request("PUT", path, body.to_string().as_bytes())
}

/// Refusals every VMM gives, whatever its state: the HTTP layer, routing,
/// and the shape of bodies.
fn shape_refusals() -> Vec<(Vec<u8>, &'static str)> {
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(60_000));
    vec![
        // HTTP.
        (b"PUT /machine-config HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), "Invalid Content-Length header: \"x\""),
        (b"PUT /machine-config HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_vec(), "Invalid Content-Length header"),
        (
            b"PUT /machine-config HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
            "Invalid Content-Length header",
        ),
        (
            b"PUT /machine-config HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}".to_vec(),
            "Invalid Content-Length header",
        ),
        (
            b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(),
            "Transfer-Encoding \"chunked\" is not supported",
        ),
        (big.clone().into_bytes(), "Invalid HTTP request"),
        (request("PUT", "/boot-source", big.as_bytes()), "is larger than the limit of 51200"),
        (
            format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(20_000)).into_bytes(),
            "larger than the limit of 16384 bytes",
        ),
        (b"GET / HTTP/1.1\r\nNo Colon Here\r\n\r\n".to_vec(), "Invalid HTTP request"),
        (b"GET /\xff HTTP/1.1\r\n\r\n".to_vec(), "Invalid HTTP request"),
        (b"GET / HTTP/3.0\r\n\r\n".to_vec(), "Invalid HTTP request"),
        // Routing: Firecracker answers 400, not 404 or 405.
        (request("GET", "/no-such-path", b""), "Invalid request method and/or path: GET /no-such-path."),
        (request("DELETE", "/machine-config", b""), "Invalid request method and/or path: DELETE /machine-config."),
        (request("POST", "/actions", b"{}"), "Invalid request method and/or path: POST /actions."),
        (request("PATCH", "/boot-source", b"{}"), "Invalid request method and/or path: PATCH /boot-source."),
        (request("GET", "/vsock", b""), "Invalid request method and/or path: GET /vsock."),
        (request("PUT", "/vm/config", b"{}"), "Invalid request method and/or path: PUT /vm/config."),
        (request("GET", "/machine-config?x=1", b""), "Invalid request method and/or path"),
        (request("GET", "/", b"{}"), "GET request cannot have a body."),
        (request("PUT", "/logger", b""), "Empty PUT request."),
        (request("PATCH", "/vm", b""), "Empty PATCH request."),
        (request("PATCH", "/machine-config", b"{}"), "Empty PATCH request."),
        (request("PATCH", "/machine-config", br#"{"smt": null}"#), "Empty PATCH request."),
        // Bodies: syntax, types, fields, ranges the types cannot hold.
        (request("PUT", "/machine-config", b"{\"vcpu_count\": 1, \"mem_size_mib\": \xff}"), "expected value"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": 1,"#), "EOF while parsing"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": "2", "mem_size_mib": 64}"#), "invalid type: string"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": 1.5, "mem_size_mib": 64}"#), "invalid type: floating"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": 256, "mem_size_mib": 64}"#), "expected u8"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": -1, "mem_size_mib": 64}"#), "invalid value: integer"),
        (request("PUT", "/machine-config", br#"{"vcpu_count": 1}"#), "missing field `mem_size_mib`"),
        (
            request("PUT", "/machine-config", br#"{"vcpu_count": 1, "mem_size_mib": 64, "gpu": 1}"#),
            "unknown field `gpu`",
        ),
        (
            request("PUT", "/machine-config", br#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": null}"#),
            "invalid type: null",
        ),
        (request("PUT", "/machine-config", br#"[1, 64]"#), "the body is a JSON array"),
        (
            put(
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": "tap0",
                "rx_rate_limiter": {"bandwidth": [1000, 100]}}),
            ),
            "field `rx_rate_limiter.bandwidth` is a JSON array",
        ),
        (request("PUT", "/machine-config", br#"{"vcpu_count": 1, "mem_size_mib": 64} {}"#), "trailing characters"),
        (request("PATCH", "/machine-config", br#"{"huge_pages": "1G"}"#), "unknown variant `1G`"),
        (request("PUT", "/boot-source", br#"{"kernel_image_path": 7}"#), "invalid type: integer `7`"),
        (request("PUT", "/boot-source", br#"{"boot_args": "quiet"}"#), "missing field `kernel_image_path`"),
        (request("PUT", "/actions", br#"{"action_type": "Reboot"}"#), "unknown variant `Reboot`"),
        (request("PUT", "/actions", br#"{"action_type": null}"#), "expected value at line 1 column 17"),
        (request("PATCH", "/vm", br#"{"state": "Stopped"}"#), "unknown variant `Stopped`"),
        (request("PUT", "/logger", br#"{"log_path": "/l", "level": "Loud"}"#), "unknown variant `Loud`"),
        (request("PUT", "/metrics", br#"{"metrics_path": ["/m"]}"#), "field `metrics_path` is a JSON array"),
        (request("PUT", "/vsock", br#"{"guest_cid": 4294967296000000000000, "uds_path": "/v"}"#), "invalid"),
        (request("PUT", "/vsock", br#"{"guest_cid": "3", "uds_path": "/v"}"#), "invalid type: string"),
        // Ids in paths and bodies.
        (put("/network-interfaces/", json!({"iface_id": "e", "host_dev_name": "t"})), "The ID cannot be empty."),
        (put("/network-interfaces/a.b", json!({"iface_id": "a.b", "host_dev_name": "t"})), "alphanumeric"),
        (put("/network-interfaces/%C3%A9", json!({"iface_id": "é", "host_dev_name": "t"})), "alphanumeric"),
        (put("/fs/a%2Fb", json!({"fs_id": "a/b", "tag": "t", "shared_dir": "/"})), "alphanumeric"),
        (put(&format!("/fs/{}", "i".repeat(65)), json!({})), "at most 64 bytes"),
        (
            put("/network-interfaces/eth7", json!({"iface_id": "eth8", "host_dev_name": "t"})),
            "The id from the path [eth7] does not match the id from the body [eth8]!",
        ),
    ]
}

#[test]
fn malformed_requests_are_refused_and_change_nothing() {
    let dir = scratch("api-input");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off"]);
    // A configuration to keep: every section set.
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, elf(&Asm::new().spin().code, false)).unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let fifo = dir.join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    for (path, body) in [
        ("/boot-source", json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"})),
        ("/machine-config", json!({"vcpu_count": 2, "mem_size_mib": 96})),
        ("/vsock", json!({"guest_cid": 3, "uds_path": dir.join("v.sock")})),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}),
        ),
        ("/fs/root", json!({"fs_id": "root", "tag": "root", "shared_dir": share})),
        ("/metrics", json!({"metrics_path": dir.join("metrics.json")})),
    ] {
        let (status, response) = vmm.request("PUT", path, Some(&body.to_string()));
        assert_eq!(status, 204, "PUT {path}: {response}");
    }

    let mut cases = shape_refusals();
    let missing = dir.join("missing").to_str().unwrap().to_owned();
    cases.extend([
        // Values the VMM checks.
        (put("/machine-config", json!({"vcpu_count": 0, "mem_size_mib": 64})), "vcpu_count must be between 1 and 32"),
        (put("/machine-config", json!({"vcpu_count": 33, "mem_size_mib": 64})), "vcpu_count"),
        (put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 0})), "mem_size_mib"),
        (put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 262145})), "mem_size_mib"),
        (put("/machine-config", json!({"vcpu_count": 3, "mem_size_mib": 64, "smt": true})), "smt"),
        (put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 65, "huge_pages": "2M"})), "multiple of 2"),
        (put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"})), "cpu_template T2"),
        (request("PATCH", "/machine-config", br#"{"vcpu_count": 0}"#), "vcpu_count"),
        (put("/boot-source", json!({"kernel_image_path": missing})), "The kernel file cannot be opened"),
        (put("/boot-source", json!({"kernel_image_path": dir.as_os_str().to_str()})), "is not a regular file"),
        // A FIFO would block an open until a writer came, stalling the VMM.
        (put("/boot-source", json!({"kernel_image_path": fifo})), "is not a regular file"),
        (put("/boot-source", json!({"kernel_image_path": kernel, "initrd_path": fifo})), "initrd file"),
        (put("/boot-source", json!({"kernel_image_path": "/dev/null"})), "is not a regular file"),
        (put("/boot-source", json!({"kernel_image_path": "a\u{0}b"})), "unexpected NUL byte"),
        (put("/vsock", json!({"guest_cid": 2, "uds_path": "/v"})), "guest_cid must be between 3"),
        (put("/vsock", json!({"guest_cid": 3, "uds_path": ""})), "uds_path must not be empty"),
        (
            put("/network-interfaces/eth1", json!({"iface_id": "eth1", "host_dev_name": "tap0"})),
            "already in use by network interface eth0",
        ),
        (
            put(
                "/network-interfaces/eth1",
                json!({"iface_id": "eth1", "host_dev_name": "t1", "guest_mac": "01:00:00:00:00:01"}),
            ),
            "multicast",
        ),
        (
            put("/network-interfaces/eth1", json!({"iface_id": "eth1", "host_dev_name": "t 1"})),
            "not a valid interface name",
        ),
        (
            put("/fs/data", json!({"fs_id": "data", "tag": "root", "shared_dir": share})),
            "already used by file system root",
        ),
        (put("/fs/data", json!({"fs_id": "data", "tag": "data", "shared_dir": missing})), "does not exist"),
        (put("/metrics", json!({"metrics_path": dir.join("again.json")})), "already"),
        // Post-boot only.
        (request("PATCH", "/vm", br#"{"state": "Paused"}"#), "before starting the microVM"),
        (put("/actions", json!({"action_type": "SendCtrlAltDel"})), "before starting the microVM"),
    ]);
    let count = check_refusals(&vmm, &cases);
    eprintln!("{count} refusals before InstanceStart");
    // The FIFO was never opened by anyone else: a VMM blocked on it would not have answered.
    assert!(fifo.exists());
}

#[test]
fn requests_only_allowed_before_start_are_refused_after_and_change_nothing() {
    require_kvm();
    let dir = scratch("api-input-after-start");
    let vmm = ApiVmm::start(&dir, &["--serial-out", "off"]);
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, elf(&Asm::new().spin().code, false)).unwrap();
    let boot = json!({"kernel_image_path": kernel});
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot.to_string())).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);

    let after_start = "The requested operation is not supported after starting the microVM.";
    let mut cases = shape_refusals();
    cases.extend([
        (put("/actions", json!({"action_type": "InstanceStart"})), after_start),
        (put("/boot-source", boot.clone()), after_start),
        (put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 64})), after_start),
        (request("PATCH", "/machine-config", br#"{"mem_size_mib": 64}"#), after_start),
        (put("/logger", json!({"log_path": dir.join("log")})), after_start),
        (put("/metrics", json!({"metrics_path": dir.join("metrics")})), after_start),
        (put("/vsock", json!({"guest_cid": 3, "uds_path": dir.join("v.sock")})), after_start),
        (put("/network-interfaces/eth0", json!({"iface_id": "eth0", "host_dev_name": "tap0"})), after_start),
        (put("/fs/root", json!({"fs_id": "root", "tag": "root", "shared_dir": dir.as_os_str().to_str()})), after_start),
        (put("/actions", json!({"action_type": "FlushMetrics"})), "metrics are not configured"),
    ]);
    let count = check_refusals(&vmm, &cases);
    eprintln!("{count} refusals after InstanceStart");
    // The state is still one PATCH /vm can change, so the VM is live.
    assert_eq!(vmm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    assert_eq!(snapshot(&vmm)["/"]["state"], "Paused");
}
