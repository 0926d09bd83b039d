//! `api/openapi.yaml` exercised against a running husk-vmm by schemathesis,
//! a property-based tester: for every documented operation it generates
//! requests the spec calls valid and requests it calls invalid, sends them,
//! and checks each answer: no 5xx, every response conforms to its documented
//! schema and status codes, schema-violating requests are refused.
//!
//! schemathesis speaks HTTP over TCP and husk-vmm serves a Unix socket, so
//! the test forwards a loopback TCP port to the socket. schemathesis is a
//! Python tool, installed into a virtualenv outside the repository by
//! `scripts/install-deps.sh apitest`; without it the test fails and says so.
//!
//! Checks: `--checks all`, less three whose assumptions husk's API does not
//! share, each replaced by a check of the same concern in
//! `schemathesis/hooks.py`:
//! - `unsupported_method` wants 405 for an undocumented method; Firecracker's
//!   API (and so husk's) answers every unroutable request with 400 and a
//!   `fault_message`, which clients of Firecracker rely on. The requests are
//!   still sent in the fuzzing phases and must be answered 400 with an Error.
//! - `positive_data_acceptance` wants every schema-valid request accepted;
//!   the VMM also checks what no schema can (a kernel file exists, a TAP is
//!   not used twice, PATCH /vm only after InstanceStart), so such requests
//!   are rightly refused. `schema_valid_requests_parse` checks instead that
//!   none is refused for its shape (JSON types, fields, ids, routing).
//! - `content_type_conformance` wants the spec's global `produces` type on
//!   every response; Swagger 2.0 cannot say that a 204 has no body, and
//!   husk's 204s (as Firecracker's) carry no Content-Type.
//!   `bodies_are_labelled_json` checks that every other response is
//!   `application/json` and that a 204 is empty.
//!
//! Two runs: one against a VMM before InstanceStart, one against a running
//! guest, where the post-boot rules apply. Pre-boot, InstanceStart cannot
//! boot anything generated: the VMM's working directory is empty, a boot
//! source must name a regular file, and the run ends by checking that the
//! VM was never started.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use common::*;

/// Fixed, so that CI runs the same requests every time; a failure names
/// the seed and schemathesis can replay it.
const SEED: &str = "20250607";

/// The schemathesis release `scripts/install-deps.sh apitest` installs; the
/// command line below uses its flags.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The schemathesis executable: `HUSK_SCHEMATHESIS`, else the virtualenv
/// `scripts/install-deps.sh apitest` makes.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("HUSK_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/husk"));
    cache.join("venv/bin/schemathesis")
}

/// Fails, never skips, when schemathesis is missing or not the expected release.
fn require_schemathesis() -> PathBuf {
    let path = schemathesis();
    let output = Command::new(&path).arg("--version").output().unwrap_or_else(|e| {
        panic!(
            "schemathesis is not installed at {} ({e}): run `scripts/install-deps.sh apitest` \
             (or set HUSK_SCHEMATHESIS to a schemathesis {SCHEMATHESIS_VERSION} executable)",
            path.display()
        )
    });
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && version.contains(SCHEMATHESIS_VERSION),
        "{} --version says {version:?}, this test is written for {SCHEMATHESIS_VERSION}: \
         run `scripts/install-deps.sh apitest`",
        path.display()
    );
    path
}

/// Forwards connections to a loopback TCP port to the Unix socket `target`,
/// byte for byte, until the test ends. Returns the port.
fn forward(target: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().unwrap().port();
    let target = target.to_path_buf();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = UnixStream::connect(&target) else { continue };
            let (client_read, server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || pipe(client_read, server_write, |s| s.shutdown(Shutdown::Write)));
            thread::spawn(move || pipe(server, client, |s| s.shutdown(Shutdown::Write)));
        }
    });
    port
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn pipe<R: Read, W: Write>(mut from: R, mut to: W, shutdown: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = shutdown(&to);
}

/// The number after `label` in schemathesis' summary (`  2159 generated`,
/// `Tested: 13`).
fn summary_number(output: &str, label: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(label) {
            return rest.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok();
        }
        let (number, rest) = line.split_once(' ')?;
        rest.starts_with(label).then(|| number.parse().ok()).flatten()
    })
}

/// Runs schemathesis over the whole spec against the VMM at `socket`, and
/// fails with its report unless every check passed. Returns the number of
/// test cases it generated.
fn run_schemathesis(dir: &Path, socket: &Path, max_examples: u32) -> u64 {
    let schemathesis = require_schemathesis();
    let port = forward(socket);
    let work = dir.join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let output = Command::new(&schemathesis)
        .arg("--no-color")
        .arg("run")
        .arg(repo().join("api/openapi.yaml"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--checks", "all"])
        .args(["--exclude-checks", "unsupported_method,positive_data_acceptance,content_type_conformance"])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--seed", SEED])
        // One worker: the VMM serves one request at a time anyway, and the
        // order of requests (so the VMM's state) is then the seed's.
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", repo().join("vmm/tests/schemathesis"))
        // No __pycache__ beside hooks.py in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&work)
        .stdin(Stdio::null())
        .output()
        .expect("running schemathesis");
    let report = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::write(dir.join("schemathesis.log"), &report).unwrap();
    assert!(output.status.success(), "schemathesis found problems (seed {SEED}):\n{report}");
    let tested = summary_number(&report, "Tested:");
    assert_eq!(tested, Some(husk_vmm::api_server::ROUTES.len() as u64), "not every operation was tested:\n{report}");
    let generated = summary_number(&report, "generated").unwrap_or_else(|| panic!("no test case count:\n{report}"));
    eprintln!("schemathesis: {generated} test cases over {} operations, seed {SEED}", tested.unwrap());
    generated
}

/// husk-vmm with its API at `dir/api.sock`, started in an empty working
/// directory so that relative paths the tester generates name nothing.
fn start_vmm(dir: &Path) -> ApiVmm {
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let socket = dir.join("api.sock");
    let child = Command::new(vmm_binary())
        .arg("--api-sock")
        .arg(&socket)
        .args(["--serial-out", "off"])
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.stderr")).unwrap())
        .spawn()
        .expect("starting husk-vmm");
    let vmm = ApiVmm { child, socket };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while UnixStream::connect(&vmm.socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "the API socket never accepted a connection");
        thread::sleep(std::time::Duration::from_millis(5));
    }
    vmm
}

fn instance_state(vmm: &ApiVmm) -> String {
    let (status, body) = vmm.request("GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    info["state"].as_str().unwrap().to_owned()
}

fn assert_alive(vmm: &mut ApiVmm, dir: &Path) {
    if let Some(status) = vmm.child.try_wait().unwrap() {
        let stderr = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default();
        panic!("husk-vmm ended during the run ({status}):\n{stderr}");
    }
}

#[test]
fn the_spec_holds_before_instance_start() {
    let dir = scratch("schemathesis-pre-boot");
    let mut vmm = start_vmm(&dir);
    let generated = run_schemathesis(&dir, &vmm.socket, 100);
    assert!(generated >= 1000, "only {generated} test cases");
    assert_alive(&mut vmm, &dir);
    assert_eq!(instance_state(&vmm), "Not started", "a generated request started the VM");
}

#[test]
fn the_spec_holds_after_instance_start() {
    require_kvm();
    let dir = scratch("schemathesis-post-boot");
    let mut vmm = start_vmm(&dir);
    // A guest that spins: it never ends the VM, whatever the tester sends
    // (Ctrl-Alt-Del included).
    let kernel = dir.join("spin.elf");
    std::fs::write(&kernel, elf(&Asm::new().spin().code, false)).unwrap();
    let boot = serde_json::json!({"kernel_image_path": kernel}).to_string();
    assert_eq!(vmm.request("PUT", "/boot-source", Some(&boot)).0, 204);
    assert_eq!(vmm.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    let generated = run_schemathesis(&dir, &vmm.socket, 50);
    assert!(generated >= 500, "only {generated} test cases");
    assert_alive(&mut vmm, &dir);
    let state = instance_state(&vmm);
    assert!(state == "Running" || state == "Paused", "{state}");
}
