//! husk's OCI runtime: runs each container in its own microVM and drives
//! the guest agent inside it. The `husk` binary (src/main.rs) is the
//! runc-compatible command line; this library holds its parts.

pub mod agent_client;
pub mod assets;
pub mod container_state;
pub mod features;
pub mod host_cgroup;
pub mod monitor;
pub mod network;
pub mod shares;
pub mod sizing;
pub mod spec_template;
pub mod stdio;
pub mod vmm_client;

pub use agent_client::{AgentClient, ClientError, Pong, Started};
