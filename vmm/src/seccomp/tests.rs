use std::collections::BTreeSet;
use std::process::{Command, Output};

use super::*;

/// A filter is for good: the scenarios that install one run in a fresh copy
/// of this test binary, chosen by this variable, never in the harness.
const CHILD_ENV: &str = "HUSK_SECCOMP_TEST_CHILD";

/// Runs test `name` of this module again in a child process, where it
/// plays `scenario`.
fn in_child(name: &str, scenario: &str) -> Output {
    let test = format!("seccomp::tests::{name}");
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .expect("running the test binary")
}

/// In the child: plays the scenario and exits, or returns in the parent.
fn child_scenario() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks that the child was killed by its filter for `nr` on `thread`.
fn assert_killed(output: &Output, thread: &str, kind: ThreadKind, nr: i64, name: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(i32::from(vmm_exit::SECCOMP)), "{output:?}");
    let line = format!(
        "husk-vmm: seccomp: thread '{thread}' ({} filter) made a disallowed system call {nr} ({name}); killing the VMM",
        kind.filter_name()
    );
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    assert!(!text.contains("NOT KILLED"), "{text}");
}

/// Runs `body` on a new thread called `name` after it installed `kind`'s
/// real filter, as the VMM's threads do.
fn filtered_thread(name: &str, kind: ThreadKind, body: impl FnOnce() + Send + 'static) -> ! {
    let filters = SeccompFilters::new().expect("the filters compile");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            filters.apply(kind).expect("installing the filter");
            body();
        })
        .unwrap()
        .join()
        .unwrap();
    eprintln!("NOT KILLED");
    std::process::exit(0)
}

fn write_stderr(text: &str) -> isize {
    // SAFETY: write(2) from a valid buffer.
    unsafe { libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len()) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The filters, in seccompiler's JSON format.
const FILTERS_JSON: &str = include_str!("filters/x86_64.json");

#[test]
fn every_filter_compiles_and_the_built_programs_are_the_json_s() {
    let map = seccompiler::compile_from_json(FILTERS_JSON.as_bytes(), seccompiler::TargetArch::x86_64).unwrap();
    let names: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["api", "event_loop", "no_clone3", "vcpu"]));
    assert_eq!(built::PROGRAMS.len(), map.len());
    for (name, program) in &map {
        let name: &'static str = built::PROGRAMS.iter().find(|(built, _)| built == name).unwrap().0;
        assert_eq!(&built_program(name).unwrap(), program, "{name}: build.rs's program differs from the JSON's");
    }
    assert!(matches!(built_program("nope"), Err(SeccompError::MissingFilter("nope"))));
    let filters = SeccompFilters::new().unwrap();
    assert!(filters.enabled());
    assert!(!SeccompFilters::disabled().enabled());
    // Disabled filters install nothing, so this thread is not confined.
    SeccompFilters::disabled().apply(ThreadKind::Vcpu).unwrap();
}

#[test]
fn every_rule_says_who_needs_it_and_nothing_runs_programs() {
    let json: serde_json::Value = serde_json::from_str(FILTERS_JSON).unwrap();
    let forbidden = ["execve", "execveat", "fork", "vfork", "ptrace", "process_vm_writev", "kexec_load", "bpf"];
    for (filter, body) in json.as_object().unwrap() {
        for rule in body["filter"].as_array().unwrap() {
            let syscall = rule["syscall"].as_str().unwrap();
            let comment = rule["comment"].as_str().unwrap_or("");
            assert!(!comment.trim().is_empty(), "{filter}: {syscall} has no comment saying who needs it");
            assert!(
                syscall_names::X86_64.iter().any(|&(_, name)| name == syscall),
                "{filter}: unknown system call {syscall}"
            );
            if body["match_action"] == "allow" {
                assert!(!forbidden.contains(&syscall), "{filter} allows {syscall}");
            }
        }
    }
    for kind in ThreadKind::ALL {
        assert_eq!(json[kind.filter_name()]["mismatch_action"], "trap", "{kind}: default deny");
    }
}

#[test]
fn the_kick_signal_is_the_one_the_event_loop_may_send() {
    // The event-loop filter allows tgkill with this number only.
    assert_eq!(crate::vcpu::kick_signal(), 34);
}

#[test]
fn system_calls_are_named_by_number() {
    assert_eq!(syscall_name(41), Some("socket"));
    assert_eq!(syscall_name(59), Some("execve"));
    assert_eq!(syscall_name(16), Some("ioctl"));
    assert_eq!(syscall_name(435), Some("clone3"));
    assert_eq!(syscall_name(100_000), None);
    assert_eq!(syscall_name(-1), None);
}

#[test]
fn the_violation_line_names_the_thread_the_filter_and_the_call() {
    let line = violation_line(b"vcpu0", Some(ThreadKind::Vcpu), 41);
    assert_eq!(
        std::str::from_utf8(&line.buf[..line.len]).unwrap(),
        "husk-vmm: seccomp: thread 'vcpu0' (vcpu filter) made a disallowed system call 41 (socket); killing the VMM\n"
    );
    let line = violation_line(b"", None, 999);
    assert_eq!(
        std::str::from_utf8(&line.buf[..line.len]).unwrap(),
        "husk-vmm: seccomp: thread '' made a disallowed system call 999 (unknown); killing the VMM\n"
    );
}

#[test]
fn a_vcpu_thread_making_a_disallowed_call_kills_the_process() {
    if child_scenario().is_some() {
        filtered_thread("vcpu0", ThreadKind::Vcpu, || {
            assert!(write_stderr("allowed write\n") > 0);
            // An allowed ioctl on a bad descriptor fails normally.
            // SAFETY: ioctl on an invalid descriptor touches no memory.
            assert_eq!(unsafe { libc::ioctl(-1, 0xae80) }, -1);
            assert_eq!(errno(), libc::EBADF);
            // SAFETY: socket(2) with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
    }
    let output = in_child("a_vcpu_thread_making_a_disallowed_call_kills_the_process", "socket");
    assert_killed(&output, "vcpu0", ThreadKind::Vcpu, 41, "socket");
    assert!(stderr(&output).contains("allowed write"), "{}", stderr(&output));
}

#[test]
fn the_violation_line_also_goes_to_the_log_file() {
    let log = std::env::temp_dir().join(format!("husk-seccomp-test-{}.log", std::process::id()));
    if let Some(path) = child_scenario() {
        crate::logger::init("seccomp-test", Some(&path), husk_api::vmm::LogLevel::Info).unwrap();
        filtered_thread("vcpu3", ThreadKind::Vcpu, || {
            // SAFETY: socket(2) with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
    }
    let output = in_child("the_violation_line_also_goes_to_the_log_file", log.to_str().unwrap());
    assert_killed(&output, "vcpu3", ThreadKind::Vcpu, 41, "socket");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("husk-vmm: seccomp: thread 'vcpu3' (vcpu filter) made a disallowed system call 41 (socket)"),
        "{text}"
    );
}

#[test]
fn a_vcpu_thread_cannot_run_a_program() {
    if child_scenario().is_some() {
        filtered_thread("vcpu1", ThreadKind::Vcpu, || {
            let program = c"/bin/true";
            let argv = [program.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argument and environment arrays.
            unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        });
    }
    let output = in_child("a_vcpu_thread_cannot_run_a_program", "exec");
    assert_killed(&output, "vcpu1", ThreadKind::Vcpu, 59, "execve");
}

#[test]
fn a_vcpu_ioctl_outside_its_request_numbers_kills_the_process() {
    if child_scenario().is_some() {
        filtered_thread("vcpu0", ThreadKind::Vcpu, || {
            // KVM_CREATE_VM: not a vCPU's business, whatever the descriptor.
            // SAFETY: ioctl on an invalid descriptor touches no memory.
            unsafe { libc::ioctl(-1, 0xae01) };
        });
    }
    let output = in_child("a_vcpu_ioctl_outside_its_request_numbers_kills_the_process", "ioctl");
    assert_killed(&output, "vcpu0", ThreadKind::Vcpu, 16, "ioctl");
}

#[test]
fn api_threads_start_connection_threads_but_cannot_fork_or_open_inet_sockets() {
    let name = "api_threads_start_connection_threads_but_cannot_fork_or_open_inet_sockets";
    match child_scenario().as_deref() {
        Some("inet") => filtered_thread("husk-api", ThreadKind::Api, || {
            assert!(write_stderr("allowed write\n") > 0);
            // The API threads only accept: no socket() at all.
            // SAFETY: socket(2) with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }),
        Some("thread") => filtered_thread("husk-api", ThreadKind::Api, || {
            // A connection thread: clone3 is refused with ENOSYS, glibc
            // falls back to clone with CLONE_THREAD, which is allowed.
            let conn = std::thread::Builder::new()
                .name("husk-api-conn".into())
                .spawn(|| {
                    inherited(ThreadKind::Api);
                    assert!(write_stderr("connection thread runs\n") > 0);
                    // SAFETY: socket(2) with constant arguments.
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
                })
                .unwrap();
            let _ = conn.join();
        }),
        Some("fork") => filtered_thread("husk-api", ThreadKind::Api, || {
            // SAFETY: fork in a child test process; the child (if any) exits at once.
            if unsafe { libc::fork() } == 0 {
                // SAFETY: _exit in a forked child.
                unsafe { libc::_exit(0) };
            }
        }),
        Some(other) => panic!("unknown scenario {other}"),
        None => {}
    }
    // socket() is not in the API's list: the first call kills.
    let output = in_child(name, "inet");
    assert_killed(&output, "husk-api", ThreadKind::Api, 41, "socket");

    let output = in_child(name, "thread");
    assert_killed(&output, "husk-api-conn", ThreadKind::Api, 41, "socket");
    assert!(stderr(&output).contains("connection thread runs"), "{}", stderr(&output));

    // glibc's fork is clone without CLONE_THREAD.
    let output = in_child(name, "fork");
    assert_killed(&output, "husk-api", ThreadKind::Api, 56, "clone");
}

#[test]
fn the_event_loop_filter_allows_device_work_and_kills_on_anything_else() {
    let name = "the_event_loop_filter_allows_device_work_and_kills_on_anything_else";
    match child_scenario().as_deref() {
        Some("ioctl") => filtered_thread("main", ThreadKind::EventLoop, || {
            // vsock: Unix sockets to the host's services.
            // SAFETY: socket(2) with constant arguments; the fd is closed.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: closing the socket just made.
            unsafe { libc::close(fd) };
            // SAFETY: ioctl on an invalid descriptor touches no memory.
            assert_eq!(unsafe { libc::ioctl(-1, libc::FIONBIO) }, -1);
            assert_eq!(errno(), libc::EBADF);
            assert!(write_stderr("device work done\n") > 0);
            // TUNSETIFF: attaching to another TAP after boot.
            // SAFETY: ioctl on an invalid descriptor touches no memory.
            unsafe { libc::ioctl(-1, libc::TUNSETIFF) };
        }),
        Some("inet") => filtered_thread("main", ThreadKind::EventLoop, || {
            // SAFETY: socket(2) with constant arguments.
            unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0) };
        }),
        Some("exec-mapping") => filtered_thread("main", ThreadKind::EventLoop, || {
            // SAFETY: an anonymous mapping; never used.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            // SAFETY: changing the protection of the mapping just made.
            unsafe { libc::mprotect(ptr, 4096, libc::PROT_READ | libc::PROT_EXEC) };
        }),
        Some(other) => panic!("unknown scenario {other}"),
        None => {}
    }
    let output = in_child(name, "ioctl");
    assert_killed(&output, "main", ThreadKind::EventLoop, 16, "ioctl");
    assert!(stderr(&output).contains("device work done"), "{}", stderr(&output));

    let output = in_child(name, "inet");
    assert_killed(&output, "main", ThreadKind::EventLoop, 41, "socket");

    let output = in_child(name, "exec-mapping");
    assert_killed(&output, "main", ThreadKind::EventLoop, 10, "mprotect");
}
