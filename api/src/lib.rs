//! husk's contracts. Everything that crosses a boundary between husk's
//! components — the guest-visible ABI the VMM offers to the agent, and (in
//! later modules) the HTTP API and the host↔agent protocol — is defined here
//! and nowhere else, so both sides compile against one definition.

pub mod agent_console;
pub mod agent_protocol;
pub mod devices;
pub mod guest_signal;
pub mod vmm;
pub mod vmm_exit;
