//! The VMM's log: `tracing` events formatted as Firecracker formats its log
//! lines (`<time> [<instance id>:<thread>:<level>:<origin>] <message>`), to
//! stderr until `--log-path` or `PUT /logger` points it at a file or FIFO.
//! Level and format switches are atomics, so they change at run time
//! without a lock on the logging path; only the sink is behind a mutex.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use husk_api::vmm::{LogLevel, LoggerConfig};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

static LEVEL: AtomicU8 = AtomicU8::new(level_rank(Some(Level::WARN)));
static SHOW_LEVEL: AtomicBool = AtomicBool::new(true);
static SHOW_ORIGIN: AtomicBool = AtomicBool::new(false);
static INSTANCE_ID: OnceLock<String> = OnceLock::new();
static SINK: Mutex<Option<File>> = Mutex::new(None);
/// The sink's descriptor (-1 for stderr), for the seccomp SIGSYS handler,
/// which can take no lock. The file is never closed once set: the sink is
/// set at most once.
static SINK_FD: AtomicI32 = AtomicI32::new(-1);
static CONFIGURED: AtomicBool = AtomicBool::new(false);

const fn level_rank(level: Option<Level>) -> u8 {
    match level {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn to_tracing(level: LogLevel) -> Option<Level> {
    match level {
        LogLevel::Off => None,
        LogLevel::Error => Some(Level::ERROR),
        LogLevel::Warning => Some(Level::WARN),
        LogLevel::Info => Some(Level::INFO),
        LogLevel::Debug => Some(Level::DEBUG),
        LogLevel::Trace => Some(Level::TRACE),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("the logger is already configured")]
    AlreadyConfigured,
    #[error("opening the log file {path}: {source}")]
    Open { path: String, source: io::Error },
}

/// Opens a log, metrics or console sink: a FIFO is opened read-write so the
/// open never blocks waiting for a reader; anything else is appended to and
/// created if missing.
pub fn open_sink(path: &str) -> io::Result<File> {
    let is_fifo = std::fs::metadata(path).map(|m| m.file_type().is_fifo()).unwrap_or(false);
    let mut options = OpenOptions::new();
    if is_fifo {
        options.read(true).write(true);
    } else {
        options.append(true).create(true).mode(0o640);
    }
    options.custom_flags(libc::O_CLOEXEC).open(path)
}

/// The log file's descriptor, when the log goes to a file or FIFO rather
/// than stderr. Async-signal-safe.
pub fn sink_fd() -> Option<RawFd> {
    Some(SINK_FD.load(Ordering::Relaxed)).filter(|&fd| fd >= 0)
}

/// Installs the global subscriber: to stderr (or `log_path`) at `level`.
pub fn init(instance_id: &str, log_path: Option<&str>, level: LogLevel) -> Result<(), LoggerError> {
    let _ = INSTANCE_ID.set(instance_id.to_owned());
    LEVEL.store(level_rank(to_tracing(level)), Ordering::Relaxed);
    if let Some(path) = log_path {
        set_sink(path)?;
        CONFIGURED.store(true, Ordering::Relaxed);
    }
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(HuskLayer));
    Ok(())
}

/// `PUT /logger`: once, before boot, as Firecracker allows.
pub fn configure(config: &LoggerConfig) -> Result<(), LoggerError> {
    if CONFIGURED.swap(true, Ordering::SeqCst) {
        return Err(LoggerError::AlreadyConfigured);
    }
    if let Err(err) = set_sink(&config.log_path) {
        CONFIGURED.store(false, Ordering::SeqCst);
        return Err(err);
    }
    if let Some(level) = config.level {
        LEVEL.store(level_rank(to_tracing(level)), Ordering::Relaxed);
    }
    if let Some(show) = config.show_level {
        SHOW_LEVEL.store(show, Ordering::Relaxed);
    }
    if let Some(show) = config.show_log_origin {
        SHOW_ORIGIN.store(show, Ordering::Relaxed);
    }
    Ok(())
}

fn set_sink(path: &str) -> Result<(), LoggerError> {
    let file = open_sink(path).map_err(|source| LoggerError::Open { path: path.to_owned(), source })?;
    let mut sink = SINK.lock().expect("log sink lock");
    SINK_FD.store(file.as_raw_fd(), Ordering::Relaxed);
    *sink = Some(file);
    Ok(())
}

struct HuskLayer;

struct MessageVisitor<'a>(&'a mut String);

impl Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for HuskLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        level_rank(Some(*metadata.level())) <= LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let thread = std::thread::current();
        let mut line = format!(
            "{}.{:06} [{}:{}",
            now.as_secs(),
            now.subsec_micros(),
            INSTANCE_ID.get().map_or("anonymous-instance", String::as_str),
            thread.name().unwrap_or("-")
        );
        if SHOW_LEVEL.load(Ordering::Relaxed) {
            let _ = write!(line, ":{}", meta.level());
        }
        if SHOW_ORIGIN.load(Ordering::Relaxed) {
            let _ = write!(line, ":{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0));
        }
        line.push_str("] ");
        event.record(&mut MessageVisitor(&mut line));
        line.push('\n');
        let mut sink = SINK.lock().expect("log sink lock");
        let _ = match sink.as_mut() {
            Some(file) => file.write_all(line.as_bytes()),
            None => io::stderr().write_all(line.as_bytes()),
        };
    }
}
