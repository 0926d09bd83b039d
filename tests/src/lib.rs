//! Support for husk's integration tests: where the project's artifacts are,
//! what kind of KVM this machine has, and the test host — a machine in which a
//! stock Linux guest really boots under KVM, which tests run their programs in.

pub mod acct;
pub mod data;
pub mod guest_vm;
pub mod kvm;
pub mod paths;
pub mod protocol;
pub mod reference_vmm;
pub mod runner;
pub mod testhost;

/// The last `count` lines of a file (a log, a console) for an error message;
/// empty if it is missing or empty.
pub fn file_tail(path: &std::path::Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
