//! Counters the VMM keeps about itself, written as one JSON line to the
//! metrics file on `FlushMetrics` (and when the VMM exits), as Firecracker
//! does. Counters are plain atomics: incrementing one on a hot path costs a
//! relaxed add and no lock.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

#[derive(Default, Serialize)]
pub struct ApiMetrics {
    pub requests: Counter,
    pub bad_requests: Counter,
}

#[derive(Default, Serialize)]
pub struct VcpuMetrics {
    pub exits_io_in: Counter,
    pub exits_io_out: Counter,
    pub exits_mmio_read: Counter,
    pub exits_mmio_write: Counter,
    /// Accesses to addresses no device owns.
    pub unhandled_io: Counter,
    pub unhandled_mmio: Counter,
    pub failures: Counter,
}

#[derive(Default, Serialize)]
pub struct SerialMetrics {
    pub bytes_out: Counter,
    pub bytes_in: Counter,
    pub lost_bytes_out: Counter,
}

#[derive(Default, Serialize)]
pub struct I8042Metrics {
    pub reset_requests: Counter,
    pub ctrl_alt_del: Counter,
    pub unknown_commands: Counter,
}

#[derive(Default, Serialize)]
pub struct BootMetrics {
    /// InstanceStart to the guest's boot-complete write, µs (0: not yet).
    pub guest_boot_time_us: Counter,
    /// InstanceStart to the first KVM_RUN, µs.
    pub first_vcpu_entry_us: Counter,
}

#[derive(Default, Serialize)]
pub struct Metrics {
    pub api: ApiMetrics,
    pub vcpu: VcpuMetrics,
    pub serial: SerialMetrics,
    pub i8042: I8042Metrics,
    pub boot: BootMetrics,
}

pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

static SINK: Mutex<Option<File>> = Mutex::new(None);

/// A device's own counters, reported under `devices.<name>` in each flush.
pub trait DeviceMetrics: Send + Sync {
    fn snapshot(&self) -> serde_json::Value;
}

impl<T: Serialize + Send + Sync> DeviceMetrics for T {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

static DEVICES: Mutex<Vec<(String, std::sync::Arc<dyn DeviceMetrics>)>> = Mutex::new(Vec::new());

/// Adds a device's counters to what every flush reports.
pub fn register_device(name: String, metrics: std::sync::Arc<dyn DeviceMetrics>) {
    DEVICES.lock().expect("metrics lock").push((name, metrics));
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics are already configured")]
    AlreadyConfigured,
    #[error("metrics are not configured: PUT /metrics first")]
    NotConfigured,
    #[error("opening the metrics file {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("writing metrics: {0}")]
    Write(std::io::Error),
}

/// Directs metrics to `path` (a file, appended to, or a FIFO).
pub fn configure(path: &str) -> Result<(), MetricsError> {
    let mut sink = SINK.lock().expect("metrics lock");
    if sink.is_some() {
        return Err(MetricsError::AlreadyConfigured);
    }
    let file = crate::logger::open_sink(path).map_err(|source| MetricsError::Open { path: path.to_owned(), source })?;
    *sink = Some(file);
    Ok(())
}

/// Writes one JSON line with every counter and a timestamp.
pub fn flush() -> Result<(), MetricsError> {
    let mut sink = SINK.lock().expect("metrics lock");
    let file = sink.as_mut().ok_or(MetricsError::NotConfigured)?;
    let utc_timestamp_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut line = serde_json::to_value(&*METRICS).expect("counters serialise");
    line["utc_timestamp_ms"] = utc_timestamp_ms.into();
    let devices: serde_json::Map<String, serde_json::Value> =
        DEVICES.lock().expect("metrics lock").iter().map(|(name, m)| (name.clone(), m.snapshot())).collect();
    line["devices"] = devices.into();
    let mut text = line.to_string();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(MetricsError::Write)
}

/// Flushes if metrics are configured; for the VMM's exit path.
pub fn flush_if_configured() {
    if SINK.lock().expect("metrics lock").is_some() {
        if let Err(err) = flush() {
            tracing::warn!("final metrics flush: {err}");
        }
    }
}
