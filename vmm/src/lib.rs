//! husk's virtual machine monitor: one process per microVM, configured and
//! driven through a Firecracker-compatible HTTP API on a Unix socket.

pub mod api_server;
pub mod arch;
pub mod boot;
pub mod devices;
pub mod logger;
pub mod metrics;
pub mod rpc;
pub mod vcpu;
pub mod vm;
pub mod vm_exit;
pub mod vmm;
