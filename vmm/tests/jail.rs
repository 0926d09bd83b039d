//! husk-vmm's built-in jail (`--jail`), on small guests run directly on
//! this machine's /dev/kvm: the jailed VMM boots and serves its API, sees
//! only its jail (not the host's root file system), runs in a mount
//! namespace of its own with its capabilities cut and no_new_privs, can
//! switch uid, and refuses a bad jail with a clear message, leaving nothing
//! mounted on the host. Needs root (mounts, namespaces).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use husk_api::vmm_exit;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The capabilities a jailed VMM keeps, as /proc/PID/status shows them:
/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, SETFCAP.
const KEPT_CAPS: u64 = 0x8000_00db;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail tests need root: they mount and unshare");
}

/// A jail directory as husk-vmm wants it: root's, mode 0755.
fn jail_dir(dir: &Path) -> PathBuf {
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755)).unwrap();
    jail
}

/// Mounts of this (the host's) namespace at or under `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    text.lines()
        .filter(|line| line.split(' ').nth(4).is_some_and(|point| point.starts_with(dir)))
        .map(str::to_owned)
        .collect()
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no {name}"));
    line[name.len() + 1..].trim().to_owned()
}

fn cap_field(pid: u32, name: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, name), 16).unwrap()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

/// A guest that prints `text` on the console and then spins.
fn spinning_guest(text: &str) -> Vec<u8> {
    elf(&Asm::new().print(text).spin().code, false)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Host files the jail binds in: the kernel, a share and the console.
struct Fixture {
    dir: Scratch,
    jail: PathBuf,
    console: PathBuf,
    share: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    require_kvm();
    require_root();
    let dir = scratch(name);
    let jail = jail_dir(&dir);
    std::fs::write(dir.join("guest.elf"), spinning_guest("jailed guest up\n")).unwrap();
    let console = dir.join("console.log");
    std::fs::write(&console, b"").unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("file"), b"shared").unwrap();
    Fixture { dir, jail, console, share }
}

impl Fixture {
    fn jail_args(&self) -> Vec<String> {
        let d = |p: &Path| p.to_str().unwrap().to_owned();
        vec![
            "--jail".into(),
            d(&self.jail),
            "--jail-bind".into(),
            format!("{}:/boot/guest.elf:ro", d(&self.dir.join("guest.elf"))),
            "--jail-bind".into(),
            format!("{}:/share", d(&self.share)),
            "--jail-bind".into(),
            format!("{}:/console.log", d(&self.console)),
            "--serial-out".into(),
            "/console.log".into(),
        ]
    }

    /// Configures the VM through the API with paths in the jail and boots it.
    fn boot(&self, vmm: &ApiVmm) {
        let put = |path: &str, body: serde_json::Value| {
            let (status, text) = vmm.request("PUT", path, Some(&body.to_string()));
            assert_eq!(status, 204, "PUT {path}: {text}\n{}", self.stderr());
        };
        put("/boot-source", serde_json::json!({"kernel_image_path": "/boot/guest.elf", "boot_args": "console=ttyS0"}));
        put("/machine-config", serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64}));
        // Built at InstanceStart, inside the jail: the share opens its
        // directory and /proc/self/fd, the vsock device binds its socket.
        put("/fs/share", serde_json::json!({"fs_id": "share", "tag": "share", "shared_dir": "/share"}));
        put("/vsock", serde_json::json!({"guest_cid": 3, "uds_path": "/v.sock"}));
        put("/actions", serde_json::json!({"action_type": "InstanceStart"}));
        wait_for("the guest's console line", || {
            std::fs::read_to_string(&self.console).unwrap().contains("jailed guest up")
        });
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmm.stderr")).unwrap_or_default()
    }
}

#[test]
fn a_jailed_vmm_boots_and_sees_only_its_jail() {
    let f = fixture("jailed");
    let args = f.jail_args();
    let vmm = ApiVmm::start(&f.dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    f.boot(&vmm);
    let pid = vmm.child.id();
    let root = PathBuf::from(format!("/proc/{pid}/root"));

    // Its root is the jail: what was bound in and the jail's own /dev and
    // /proc, nothing of the host's.
    let expected: BTreeSet<String> =
        ["boot", "console.log", "dev", "proc", "share", "v.sock"].into_iter().map(String::from).collect();
    assert_eq!(names_in(&root), expected, "{}", f.stderr());
    for host_path in ["etc/passwd", "usr", "home", "bin", "root", "tmp", "sys"] {
        assert!(!root.join(host_path).exists(), "the jailed VMM sees /{host_path}");
    }
    let devices: BTreeSet<String> = names_in(&root.join("dev"));
    assert!(devices == ["kvm", "net"].map(String::from).into() || devices == ["kvm"].map(String::from).into());
    assert_eq!(names_in(&root.join("proc")), ["self".to_owned()].into());
    assert_eq!(names_in(&root.join("share")), ["file".to_owned()].into());
    assert_eq!(std::fs::read(root.join("share/file")).unwrap(), b"shared");
    // The kernel is read-only in the jail (the VMM's view; the test is root,
    // so only the mount flag can refuse it).
    let err = std::fs::OpenOptions::new().write(true).open(root.join("boot/guest.elf")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // The vsock socket the VMM made in its root is in the jail directory
    // on the host: where the runtime reaches it.
    assert!(f.jail.join("v.sock").exists());

    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let vmm_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(own_ns, vmm_ns, "the VMM shares our mount namespace");
    // Every thread (API, vCPU, main) was started inside the jail.
    let tasks = names_in(Path::new(&format!("/proc/{pid}/task")));
    assert!(tasks.len() >= 3, "threads: {tasks:?}");
    for tid in &tasks {
        let task = format!("/proc/{pid}/task/{tid}");
        assert_eq!(std::fs::read_link(format!("{task}/ns/mnt")).unwrap(), vmm_ns, "thread {tid}");
        let status = std::fs::read_to_string(format!("{task}/status")).unwrap();
        let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        assert_eq!(u64::from_str_radix(cap_eff, 16).unwrap(), KEPT_CAPS, "thread {tid}");
    }

    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(cap_field(pid, field), KEPT_CAPS, "{field}");
    }
    assert_eq!(cap_field(pid, "CapInh"), 0);
    assert_eq!(cap_field(pid, "CapAmb"), 0);
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Uid").split_whitespace().collect::<Vec<_>>(), ["0"; 4]);

    // The API still answers after boot, and nothing was mounted on the host.
    assert_eq!(vmm.request("GET", "/", None).0, 200);
    assert_eq!(host_mounts_under(&f.dir), Vec::<String>::new());
    drop(vmm);
}

#[test]
fn the_jail_sets_the_requested_limits_and_uid() {
    let f = fixture("jail-uid");
    let mut args = f.jail_args();
    args.extend(["--jail-uid", "4321", "--jail-gid", "4322"].map(String::from));
    args.extend(["--jail-rlimit", "fsize=1048576:2097152", "--jail-rlimit", "nofile=2048"].map(String::from));
    let vmm = ApiVmm::start(&f.dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    f.boot(&vmm);
    let pid = vmm.child.id();
    assert_eq!(status_field(pid, "Uid").split_whitespace().collect::<Vec<_>>(), ["4321"; 4]);
    assert_eq!(status_field(pid, "Gid").split_whitespace().collect::<Vec<_>>(), ["4322"; 4]);
    assert_eq!(status_field(pid, "Groups"), "");
    // The capabilities survive the switch (virtio-fs needs them).
    assert_eq!(cap_field(pid, "CapEff"), KEPT_CAPS);
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(line("Max file size")[3..5], ["1048576", "2097152"], "{limits}");
    assert_eq!(line("Max open files")[3..5], ["2048", "2048"], "{limits}");
    // Ignored, so a write past fsize fails with EFBIG instead of killing it.
    let ignored = u64::from_str_radix(&status_field(pid, "SigIgn"), 16).unwrap();
    assert_ne!(ignored & (1 << (libc::SIGXFSZ - 1)), 0);
    assert_eq!(vmm.request("GET", "/", None).0, 200);
    drop(vmm);
}

#[test]
fn a_jailed_config_file_boot_runs_to_the_guest_end() {
    require_kvm();
    require_root();
    let dir = scratch("jail-config");
    let jail = jail_dir(&dir);
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, elf(&Asm::new().print("bye from the jail\n").i8042_reset().spin().code, false)).unwrap();
    // The config file is read on the host; the paths in it are the jail's.
    let config = dir.join("vm.json");
    let body = serde_json::json!({
        "boot-source": { "kernel_image_path": "/guest.elf", "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let bind = format!("{}:/guest.elf:ro", kernel.display());
    let output = run_config(&config, &["--jail", jail.to_str().unwrap(), "--jail-bind", &bind], TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "bye from the jail\n", "{}", describe(&output));
    // What stays on the host: the empty mount points, nothing mounted.
    assert_eq!(names_in(&jail), ["dev", "guest.elf", "proc"].map(String::from).into());
    assert_eq!(std::fs::metadata(jail.join("guest.elf")).unwrap().len(), 0);
    assert_eq!(host_mounts_under(&dir), Vec::<String>::new());
}

#[test]
fn a_bad_jail_is_refused_with_the_reason_and_nothing_mounted() {
    require_root();
    let dir = scratch("bad-jail");
    let jail = jail_dir(&dir);
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, b"x").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&jail, &link).unwrap();
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(1000), None).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let api = ["--api-sock", &s(&dir.join("api.sock"))].map(str::to_owned);
    let missing_source = format!("{}:/k", s(&dir.join("absent")));
    let cases: Vec<(Vec<String>, u8, String)> = vec![
        (vec!["--jail".into(), s(&dir.join("absent-jail"))], vmm_exit::USAGE, "No such file or directory".into()),
        (vec!["--jail".into(), s(&link)], vmm_exit::USAGE, "is a symlink".into()),
        (vec!["--jail".into(), s(&kernel)], vmm_exit::USAGE, "is not a directory".into()),
        (vec!["--jail".into(), s(&open)], vmm_exit::USAGE, "writable by group or others".into()),
        (vec!["--jail".into(), s(&foreign)], vmm_exit::USAGE, "owned by uid 1000".into()),
        (
            vec!["--jail".into(), s(&jail), "--jail-bind".into(), missing_source],
            vmm_exit::USAGE,
            "the bind source".into(),
        ),
        // A mount point that exists as something else: found after the
        // namespace is made, so a VMM error, and still nothing on the host.
        (
            vec!["--jail".into(), s(&jail), "--jail-bind".into(), format!("{}:/dev2/x/y", s(&dir))],
            vmm_exit::VMM_ERROR,
            "creating the mount point /dev2/x/y in the jail".into(),
        ),
        // Syntax: clap's usage errors.
        (vec!["--jail-bind".into(), format!("{}:/k", s(&kernel))], vmm_exit::USAGE, "--jail".into()),
        (
            vec!["--jail".into(), s(&jail), "--jail-bind".into(), "/x:rel".into()],
            vmm_exit::USAGE,
            "not absolute".into(),
        ),
        (vec!["--jail".into(), s(&jail), "--jail-uid".into(), "5".into()], vmm_exit::USAGE, "--jail-gid".into()),
        (vec!["--jail".into(), s(&jail), "--jail-rlimit".into(), "files=3".into()], vmm_exit::USAGE, "unknown".into()),
    ];
    // /dev2/x must be a file for the mount-point case.
    std::fs::create_dir(jail.join("dev2")).unwrap();
    std::fs::write(jail.join("dev2/x"), b"").unwrap();
    let before = host_mounts_under(&dir);
    for (args, code, message) in cases {
        let output = Command::new(vmm_binary()).args(&api).args(&args).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code.into()), "{args:?}: {stderr}");
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert_eq!(host_mounts_under(&dir), before, "{args:?} left a mount on the host");
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

/// The jail's start-up cost: husk-vmm's start to its API's first answer,
/// and its start to the end of a small guest booted from a
/// config file (the guest resets at once), jailed and not, interleaved.
/// `cargo test -p husk-vmm --test jail -- --ignored --nocapture`;
/// HUSK_JAIL_ROUNDS sets the rounds (default 20).
#[test]
#[ignore = "a measurement, not a check"]
fn measure_the_jail_start_up_cost() {
    require_kvm();
    require_root();
    let rounds: usize = std::env::var("HUSK_JAIL_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let dir = scratch("jail-measure");
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, elf(&Asm::new().print("x\n").i8042_reset().spin().code, false)).unwrap();
    let bind = format!("{}:/guest.elf:ro", kernel.display());
    let config = |path: &Path| {
        let file = dir.join(if path.starts_with("/guest.elf") { "jailed.json" } else { "plain.json" });
        let body = serde_json::json!({
            "boot-source": { "kernel_image_path": path, "boot_args": "console=ttyS0" },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
        });
        std::fs::write(&file, body.to_string()).unwrap();
        file
    };
    let plain_config = config(&kernel);
    let jailed_config = config(Path::new("/guest.elf"));
    let (mut api_ms, mut boot_ms): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
    for round in 0..rounds {
        for jailed in [round % 2 == 0, round % 2 != 0] {
            let jail = dir.join(format!("jail-{round}-{jailed}"));
            let mut jail_args: Vec<String> = Vec::new();
            if jailed {
                std::fs::create_dir(&jail).unwrap();
                std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755)).unwrap();
                jail_args = vec!["--jail".into(), jail.to_str().unwrap().into(), "--jail-bind".into(), bind.clone()];
            }
            let index = usize::from(jailed);
            let sock = dir.join("api.sock");
            let _ = std::fs::remove_file(&sock);
            let started = Instant::now();
            let mut child = Command::new(vmm_binary())
                .arg("--api-sock")
                .arg(&sock)
                .args(&jail_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Answered, not only connectable: the socket is bound before
            // the jail, its server thread started after it.
            while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                assert!(started.elapsed() < TIMEOUT, "the API never came up");
                std::thread::sleep(Duration::from_micros(200));
            }
            assert_eq!(http(&sock, "GET", "/", None).0, 200);
            api_ms[index].push(started.elapsed().as_secs_f64() * 1e3);
            let _ = child.kill();
            let _ = child.wait();

            let started = Instant::now();
            let config = if jailed { &jailed_config } else { &plain_config };
            let status = Command::new(vmm_binary())
                .args(["--no-api", "--config-file"])
                .arg(config)
                .args(&jail_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert_eq!(status.code(), Some(0), "jailed={jailed}");
            boot_ms[index].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (what, samples) in [("start to the API's first answer", api_ms), ("start to guest end", boot_ms)] {
        let [plain, jailed] = samples.map(median);
        println!(
            "BENCH jail {what}: unjailed {plain:.2} ms, jailed {jailed:.2} ms (+{:.2} ms), medians of {rounds}",
            jailed - plain
        );
    }
}
