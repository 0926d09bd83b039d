//! husk's OCI runtime: runs each container in its own microVM and drives
//! the guest agent inside it. For now this is the host side of the agent
//! protocol ([`husk_api::agent_protocol`]); the runtime's command line comes
//! on top of it.

pub mod agent_client;

pub use agent_client::{AgentClient, ClientError, Pong, Started};
