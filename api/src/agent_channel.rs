//! The host↔agent channel before the full protocol (issue #5): the agent
//! listens on vsock port [`AGENT_VSOCK_PORT`] and answers line-based
//! requests. Today one request exists: `PING\n`, answered
//! `PONG <guest uptime in µs>\n`. Anything else is answered
//! `ERROR unknown request\n`.

/// The guest vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

pub const PING: &str = "PING";
pub const PONG: &str = "PONG";
pub const ERROR_UNKNOWN: &str = "ERROR unknown request";

/// The agent's answer to one request line.
pub fn answer(request: &str, uptime_us: u64) -> String {
    match request.trim_end_matches(['\r', '\n']) {
        PING => format!("{PONG} {uptime_us}\n"),
        _ => format!("{ERROR_UNKNOWN}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_is_answered_with_the_uptime_and_anything_else_is_refused() {
        assert_eq!(answer("PING\n", 42), "PONG 42\n");
        assert_eq!(answer("PING", 7), "PONG 7\n");
        assert_eq!(answer("RM -RF /\n", 7), "ERROR unknown request\n");
    }
}
