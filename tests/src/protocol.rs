//! The test host's control protocol, between the host-side client and the
//! runner inside the nested host, over one TCP connection per request.
//!
//! The client sends one JSON [`Request`] line. The runner answers with
//! frames: a kind byte, a big-endian u32 payload length, the payload. A run
//! streams `Stdout`/`Stderr` frames and ends with one `Exit` frame (or an
//! `Error` frame when the program could not be started).

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// No single frame is larger than this; a longer length means the stream is
/// not speaking this protocol.
pub const MAX_FRAME: usize = 16 << 20;

/// The port the runner listens on inside the nested host.
pub const RUNNER_PORT: u16 = 7000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Run(RunRequest),
    /// Stop the runner; the nested host powers off.
    Shutdown,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRequest {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Added to the runner's base environment (PATH, HOME).
    pub env: Vec<(String, String)>,
    /// The program's process group is killed after this long.
    pub timeout_secs: u64,
}

/// How a program ended.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitReport {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

impl ExitReport {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// The status a shell would give: the code, or 128 + the signal.
    pub fn shell_status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }
}

/// What the runner reports about the machine it runs on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub kernel: String,
    pub uptime_secs: f64,
    pub kvm: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitReport),
    Error(String),
    Pong(HostInfo),
}

const STDOUT: u8 = b'O';
const STDERR: u8 = b'E';
const EXIT: u8 = b'X';
const ERROR: u8 = b'F';
const PONG: u8 = b'P';

impl Frame {
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let (kind, payload): (u8, std::borrow::Cow<[u8]>) = match self {
            Frame::Stdout(data) => (STDOUT, data.into()),
            Frame::Stderr(data) => (STDERR, data.into()),
            Frame::Exit(report) => (EXIT, serde_json::to_vec(report)?.into()),
            Frame::Error(message) => (ERROR, message.as_bytes().into()),
            Frame::Pong(info) => (PONG, serde_json::to_vec(info)?.into()),
        };
        if payload.len() > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame larger than MAX_FRAME"));
        }
        let mut header = [0u8; 5];
        header[0] = kind;
        header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        w.write_all(&header)?;
        w.write_all(&payload)?;
        w.flush()
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut header = [0u8; 5];
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
        }
        let len = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        let frame = match header[0] {
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EXIT => Frame::Exit(serde_json::from_slice(&payload)?),
            ERROR => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            PONG => Frame::Pong(serde_json::from_slice(&payload)?),
            other => return Err(invalid(format!("unknown frame kind {other:#04x}"))),
        };
        Ok(Some(frame))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(vec![]),
            Frame::Exit(ExitReport { code: None, signal: Some(9), timed_out: true }),
            Frame::Error("no such file".into()),
            Frame::Pong(HostInfo { kernel: "6.1".into(), uptime_secs: 1.5, kvm: "hardware".into() }),
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            frame.write_to(&mut wire).unwrap();
        }
        let mut reader = wire.as_slice();
        for frame in &frames {
            assert_eq!(Frame::read_from(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert_eq!(Frame::read_from(&mut reader).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_huge_allocation() {
        let mut huge = vec![STDOUT];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Frame::read_from(&mut huge.as_slice()).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let unknown = [b'?', 0, 0, 0, 0];
        assert!(Frame::read_from(&mut unknown.as_slice()).is_err());
        let truncated = [STDOUT, 0, 0, 0, 9, b'a'];
        assert!(Frame::read_from(&mut truncated.as_slice()).is_err());
    }

    #[test]
    fn shell_status_follows_shell_conventions() {
        assert_eq!(ExitReport { code: Some(42), ..Default::default() }.shell_status(), 42);
        assert_eq!(ExitReport { signal: Some(15), ..Default::default() }.shell_status(), 143);
        assert!(!ExitReport { code: Some(0), timed_out: true, ..Default::default() }.success());
    }

    #[test]
    fn requests_are_tagged_json() {
        let run = Request::Run(RunRequest { argv: vec!["true".into()], timeout_secs: 5, ..Default::default() });
        let json = serde_json::to_string(&run).unwrap();
        assert!(json.starts_with(r#"{"op":"run""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), run);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"ping"}"#).unwrap(), Request::Ping);
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
