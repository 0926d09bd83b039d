//! husk's virtual machine monitor: one process per microVM, configured and
//! driven through a Firecracker-compatible HTTP API on a Unix socket.

pub mod api_server;
pub mod arch;
pub mod boot;
pub mod devices;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod jail;
pub mod logger;
pub mod metrics;
pub mod rpc;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
pub mod vm_exit;
pub mod vmm;
