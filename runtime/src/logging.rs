//! runc's logging contract: lines to `--log` (else stderr), as text or as
//! JSON objects `{"level","msg","time"}`. Engines read the last error from
//! that file when a command fails (containerd's shim shows its `msg`), and
//! with `--log` only a fatal error also goes to stderr, as runc's does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

struct Logger {
    file: Option<Mutex<File>>,
    format: Format,
    debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

pub fn init(path: Option<&Path>, format: Format, debug: bool) {
    let file = path.and_then(|path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Mutex::new)
            .map_err(|err| {
                eprintln!("husk: cannot open the log {}: {err}", path.display());
            })
            .ok()
    });
    let _ = LOGGER.set(Logger { file, format, debug });
}

fn write(level: &str, message: &str) {
    let Some(logger) = LOGGER.get() else {
        eprintln!("husk: {level}: {message}");
        return;
    };
    let line = match logger.format {
        Format::Json => {
            let mut line = serde_json::json!({
                "level": level, "msg": message, "time": husk_runtime::container_state::now_rfc3339(),
            })
            .to_string();
            line.push('\n');
            line
        }
        Format::Text => {
            format!("time=\"{}\" level={level} msg={message:?}\n", husk_runtime::container_state::now_rfc3339())
        }
    };
    match &logger.file {
        Some(file) => {
            let _ = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub fn error(message: &str) {
    write("error", message);
}

pub fn warn(message: &str) {
    write("warning", message);
}

pub fn debug(message: &str) {
    if LOGGER.get().is_some_and(|l| l.debug) {
        write("debug", message);
    }
}
