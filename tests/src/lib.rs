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
