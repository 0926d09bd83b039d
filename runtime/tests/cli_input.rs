//! The `husk` command line with malformed input: every case exits non-zero
//! with a message on stderr that names the problem, and leaves nothing
//! behind: no new directory under `--root`, an existing container's record
//! untouched, no husk-vmm started, no mount made.
//!
//! Nothing here boots a VM: the cases fail before that, and `HUSK_VMM`,
//! `HUSK_KERNEL` and `HUSK_INITRAMFS` name nothing, so a check that let a
//! case through would fail the case with a message about the VMM instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use husk_runtime::container_state::{ContainerDir, ContainerRecord, HostProcess, Phase, VmRecord};
use serde_json::{json, Value};

const HUSK: &str = env!("CARGO_BIN_EXE_husk");

struct Fixture {
    dir: PathBuf,
    root: PathBuf,
    /// Stands for the existing container's monitor and VMM: a live process
    /// the test owns, so the container reads as created and running.
    stand_in: Child,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.stand_in.kill();
        let _ = self.stand_in.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bundle directory `name` with a rootfs and `config` as its config.json.
fn bundle(dir: &Path, name: &str, config: &Value) -> String {
    let bundle = dir.join(name);
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(config).unwrap()).unwrap();
    bundle.to_str().unwrap().to_owned()
}

/// `husk spec`'s config.json with `edit` applied.
fn spec_with(base: &Value, edit: impl FnOnce(&mut Value)) -> Value {
    let mut spec = base.clone();
    edit(&mut spec);
    spec
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("husk-cli-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let stand_in = Command::new("sleep").arg("600").spawn().expect("starting sleep");
        let process = HostProcess::of(stand_in.id() as i32).expect("the stand-in's start time");
        let existing = ContainerDir::new(&root, "existing").unwrap();
        drop(existing.create().unwrap());
        existing
            .save(&ContainerRecord {
                id: "existing".into(),
                bundle: dir.join("nowhere"),
                created: "2025-01-01T00:00:00Z".into(),
                annotations: BTreeMap::new(),
                phase: Phase::Running,
                monitor: process,
                vm: VmRecord {
                    vmm: process,
                    rootfs: dir.join("nowhere/rootfs"),
                    netns: None,
                    tap: None,
                    cgroups_path: None,
                    volumes: Vec::new(),
                    vcpus: 1,
                    mem_mib: 576,
                },
            })
            .unwrap();
        Self { dir, root, stand_in }
    }

    fn husk(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(HUSK)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("HUSK_VMM", "/nonexistent/husk-vmm")
            .env("HUSK_KERNEL", "/nonexistent/vmlinux")
            .env("HUSK_INITRAMFS", "/nonexistent/initramfs")
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running husk");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Everything under the root: paths and file contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(path: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(path).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    into.insert(path.clone(), Vec::new());
                    walk(&path, into);
                } else {
                    into.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(&self.root, &mut files);
        files
    }

    /// Host processes whose command line names this fixture's directory
    /// (a husk-vmm or monitor would), other than the stand-in.
    fn processes_using_the_root(&self) -> Vec<String> {
        let needle = self.dir.to_str().unwrap().as_bytes().to_vec();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid == self.stand_in.id() || pid == std::process::id() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if cmdline.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            }
        }
        found
    }

    fn mounts_under_the_dir(&self) -> Vec<String> {
        let dir = self.dir.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|line| line.split(' ').nth(4).is_some_and(|point| point.starts_with(dir)))
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn malformed_input_is_refused_precisely_and_leaves_no_state() {
    let fx = Fixture::new();
    let dir = fx.dir.clone();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();

    // A valid bundle, from `husk spec`.
    let template = dir.join("template");
    std::fs::create_dir_all(&template).unwrap();
    let output = fx.husk(&["spec", "-b", template.to_str().unwrap()], "");
    assert!(output.status.success(), "husk spec: {}", String::from_utf8_lossy(&output.stderr));
    let base: Value = serde_json::from_slice(&std::fs::read(template.join("config.json")).unwrap()).unwrap();
    let ok = bundle(&dir, "ok", &base);

    let unset = |key: &'static str| spec_with(&base, move |s| drop(s.as_object_mut().unwrap().remove(key)));
    let set = |pointer: &'static str, value: Value| {
        spec_with(&base, move |s| *s.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = value)
    };
    let bad_json = dir.join("badjson");
    std::fs::create_dir_all(bad_json.join("rootfs")).unwrap();
    std::fs::write(bad_json.join("config.json"), "{\"ociVersion\": \"1.0.2\",").unwrap();
    let no_config = dir.join("noconfig");
    std::fs::create_dir_all(no_config.join("rootfs")).unwrap();
    let config_dir = dir.join("configdir");
    std::fs::create_dir_all(config_dir.join("config.json")).unwrap();
    std::fs::write(dir.join("a-file"), "").unwrap();

    let bundles = [
        ("v2", set("/ociVersion", json!("2.0.0"))),
        ("v0", set("/ociVersion", json!("0.9"))),
        ("vnone", unset("ociVersion")),
        ("vbanana", set("/ociVersion", json!("banana"))),
        ("noprocess", unset("process")),
        ("noargs", set("/process/args", json!([]))),
        ("relcwd", set("/process/cwd", json!("tmp"))),
        ("noroot", unset("root")),
        ("escape", set("/root/path", json!("rootfs/../../.."))),
        ("missingroot", set("/root/path", json!("no-such-rootfs"))),
        ("wrongtype", set("/process", json!(5))),
    ];
    for (name, config) in &bundles {
        bundle(&dir, name, config);
    }
    std::fs::write(dir.join("bad-resources.json"), "{\"memory\": {\"limit\": \"lots\"}}").unwrap();
    std::fs::write(dir.join("bad-process.json"), "{\"args\": [\"sh\"], \"cwd\": 7}").unwrap();
    let long_id = "x".repeat(129);

    let cases: Vec<(Vec<String>, &str, String)> = vec![
        // Container ids.
        (vec!["create".into(), "-b".into(), ok.clone(), String::new()], "", "invalid container id \"\"".into()),
        (vec!["create".into(), "-b".into(), ok.clone(), "..".into()], "", "invalid container id \"..\"".into()),
        (vec!["create".into(), "-b".into(), ok.clone(), "a/b".into()], "", "invalid container id \"a/b\"".into()),
        (vec!["create".into(), "-b".into(), ok.clone(), long_id.clone()], "", "must be 1 to 128 bytes long".into()),
        (vec!["create".into(), "-b".into(), ok.clone(), "é".into()], "", "invalid container id \"é\"".into()),
        (vec!["state".into(), "../existing".into()], "", "invalid container id \"../existing\"".into()),
        (vec!["delete".into(), "a/b".into()], "", "invalid container id \"a/b\"".into()),
        // Bundles.
        (
            vec!["create".into(), "-b".into(), path("missing"), "c1".into()],
            "",
            format!("the bundle {} does not exist", path("missing")),
        ),
        (
            vec!["create".into(), "-b".into(), path("a-file"), "c1".into()],
            "",
            format!("the bundle {} is not a directory", path("a-file")),
        ),
        (
            vec!["create".into(), "-b".into(), path("noconfig"), "c1".into()],
            "",
            format!("reading {}/config.json: No such file or directory", path("noconfig")),
        ),
        (
            vec!["create".into(), "-b".into(), path("configdir"), "c1".into()],
            "",
            format!("reading {}/config.json: Is a directory", path("configdir")),
        ),
        (
            vec!["create".into(), "-b".into(), path("badjson"), "c1".into()],
            "",
            format!(
                "{}/config.json is not an OCI runtime spec: EOF while parsing a value at line 1 column 23",
                path("badjson")
            ),
        ),
        (
            vec!["create".into(), "-b".into(), path("wrongtype"), "c1".into()],
            "",
            "is not an OCI runtime spec: invalid type: integer `5`".into(),
        ),
        (
            vec!["create".into(), "-b".into(), path("v2"), "c1".into()],
            "",
            "ociVersion \"2.0.0\" is not supported: husk runs runtime-spec 1.x bundles".into(),
        ),
        (vec!["create".into(), "-b".into(), path("v0"), "c1".into()], "", "ociVersion \"0.9\" is not supported".into()),
        (vec!["create".into(), "-b".into(), path("vnone"), "c1".into()], "", "ociVersion is missing".into()),
        (
            vec!["create".into(), "-b".into(), path("vbanana"), "c1".into()],
            "",
            "ociVersion \"banana\" is not a SemVer version".into(),
        ),
        (vec!["create".into(), "-b".into(), path("noprocess"), "c1".into()], "", "process is missing".into()),
        (vec!["create".into(), "-b".into(), path("noargs"), "c1".into()], "", "process.args must not be empty".into()),
        (
            vec!["create".into(), "-b".into(), path("relcwd"), "c1".into()],
            "",
            "process.cwd tmp is not an absolute path".into(),
        ),
        (vec!["create".into(), "-b".into(), path("noroot"), "c1".into()], "", "root is missing".into()),
        (
            vec!["create".into(), "-b".into(), path("escape"), "c1".into()],
            "",
            "root.path rootfs/../../.. leaves the bundle".into(),
        ),
        (
            vec!["run".into(), "-b".into(), path("escape"), "c1".into()],
            "",
            "root.path rootfs/../../.. leaves the bundle".into(),
        ),
        (
            vec!["create".into(), "-b".into(), path("missingroot"), "c1".into()],
            "",
            format!("the rootfs {}/no-such-rootfs is not a directory", path("missingroot")),
        ),
        // A second create of an existing id.
        (
            vec!["create".into(), "-b".into(), ok.clone(), "existing".into()],
            "",
            "container \"existing\" already exists".into(),
        ),
        // Signals.
        (vec!["kill".into(), "existing".into(), "NOPE".into()], "", "unknown signal \"NOPE\"".into()),
        (vec!["kill".into(), "existing".into(), "0".into()], "", "invalid signal 0".into()),
        (vec!["kill".into(), "existing".into(), "65".into()], "", "invalid signal 65".into()),
        // A signal that looks like an option is clap's to refuse.
        (vec!["kill".into(), "existing".into(), "-9".into()], "", "unexpected argument '-9' found".into()),
        (vec!["kill".into(), "existing".into(), "--".into(), "-9".into()], "", "invalid signal -9".into()),
        (vec!["kill".into(), "existing".into(), "RTMIN+-3".into()], "", "unknown signal \"RTMIN+-3\"".into()),
        (vec!["kill".into(), "existing".into(), "RTMIN+31".into()], "", "invalid signal RTMIN+31".into()),
        (vec!["kill".into(), "nosuch".into(), "KILL".into()], "", "container \"nosuch\" does not exist".into()),
        // Containers that do not exist.
        (vec!["start".into(), "nosuch".into()], "", "container \"nosuch\" does not exist".into()),
        (vec!["state".into(), "nosuch".into()], "", "container \"nosuch\" does not exist".into()),
        (vec!["delete".into(), "nosuch".into()], "", "container \"nosuch\" does not exist".into()),
        (vec!["pause".into(), "nosuch".into()], "", "container \"nosuch\" does not exist".into()),
        // update's resources.
        (
            vec!["update".into(), "--resources".into(), path("bad-resources.json"), "existing".into()],
            "",
            format!("{} is not OCI linux resources: invalid type: string \"lots\"", path("bad-resources.json")),
        ),
        (
            vec!["update".into(), "--resources".into(), path("no-such.json"), "existing".into()],
            "",
            format!("reading {}: No such file or directory", path("no-such.json")),
        ),
        (
            vec!["update".into(), "--resources".into(), "-".into(), "existing".into()],
            "{\"cpu\": ",
            "the resources on stdin are not OCI linux resources: EOF while parsing".into(),
        ),
        (
            vec!["update".into(), "--memory".into(), "lots".into(), "existing".into()],
            "",
            "invalid memory size \"lots\"".into(),
        ),
        // exec's process.
        (
            vec!["exec".into(), "--process".into(), path("bad-process.json"), "existing".into()],
            "",
            format!("{} is not an OCI process: invalid type: integer `7`", path("bad-process.json")),
        ),
        (
            vec!["exec".into(), "--process".into(), path("no-such.json"), "existing".into()],
            "",
            format!("reading {}: No such file or directory", path("no-such.json")),
        ),
        (vec!["exec".into(), "existing".into()], "", "exec needs a command or --process".into()),
        (
            vec!["exec".into(), "-u".into(), "root".into(), "existing".into(), "sh".into()],
            "",
            "invalid uid in --user \"root\"".into(),
        ),
        (
            vec!["exec".into(), "existing".into(), "sh".into()],
            "",
            format!("reading the bundle's {}/nowhere/config.json: No such file or directory", fx.dir.display()),
        ),
    ];

    let before = fx.snapshot();
    assert_eq!(before.len(), 2, "{before:?}");
    let mut failures = Vec::new();
    for (args, stdin, expect) in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = fx.husk(&argv, stdin);
        // The text log format quotes the message and escapes its quotes.
        let stderr = String::from_utf8_lossy(&output.stderr).replace("\\\"", "\"");
        let what = format!("husk {}", argv.join(" "));
        if output.status.success() {
            failures.push(format!("{what}: succeeded"));
        } else if !stderr.contains(expect.as_str()) {
            failures.push(format!("{what}: stderr should contain {expect:?}:\n{stderr}"));
        }
        if fx.snapshot() != before {
            failures.push(format!("{what}: changed the root: {:?}", fx.snapshot().keys().collect::<Vec<_>>()));
        }
        let processes = fx.processes_using_the_root();
        if !processes.is_empty() {
            failures.push(format!("{what}: left processes behind: {processes:?}"));
        }
        let mounts = fx.mounts_under_the_dir();
        if !mounts.is_empty() {
            failures.push(format!("{what}: left mounts behind: {mounts:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // The existing container's stand-in is untouched.
    assert!(HostProcess::of(fx.stand_in.id() as i32).is_some_and(|p| p.is_alive()));
}
