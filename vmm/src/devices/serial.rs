//! The 16550 UART at COM1 (vm-superio), its output sent to stdout, a file, a
//! FIFO or nowhere, and its input fed from the VMM's stdin.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::metrics::METRICS;

/// COM1's ports.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;

/// Where the guest's console output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOut {
    Stdout,
    /// A regular file (appended to, created if missing) or a FIFO.
    Path(std::path::PathBuf),
    Off,
}

impl std::str::FromStr for SerialOut {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => Self::Stdout,
            "off" => Self::Off,
            path => Self::Path(path.into()),
        })
    }
}

impl SerialOut {
    pub fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Self::Stdout => Box::new(io::stdout()),
            Self::Path(path) => Box::new(crate::logger::open_sink(&path.to_string_lossy())?),
            Self::Off => Box::new(io::sink()),
        })
    }
}

/// Raises an interrupt line by writing to an eventfd registered as KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub struct CountingEvents;

impl SerialEvents for CountingEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        METRICS.serial.bytes_out.inc();
    }
    fn tx_lost_byte(&self) {
        METRICS.serial.lost_bytes_out.inc();
    }
    fn in_buffer_empty(&self) {}
}

pub struct SerialDevice {
    serial: Serial<IrqTrigger, CountingEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self { serial: Serial::with_events(IrqTrigger(irq), CountingEvents, out) }
    }

    /// Queues host input for the guest; returns how many bytes fitted in
    /// the UART's FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let fitting = &bytes[..bytes.len().min(self.serial.fifo_capacity())];
        if fitting.is_empty() {
            return Ok(0);
        }
        let n = self.serial.enqueue_raw_bytes(fitting).map_err(|e| io::Error::other(format!("{e:?}")))?;
        METRICS.serial.bytes_in.add(n as u64);
        Ok(n)
    }

    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            if let Err(err) = self.serial.write(offset as u8, data[0]) {
                tracing::warn!("serial write: {err:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_writes_reach_the_sink_and_host_input_is_readable() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        // Enable the "data available" interrupt, then feed input.
        serial.write(1, &[0x1]);
        assert_eq!(serial.enqueue_input(b"x").unwrap(), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut data = [0u8];
        serial.read(0, &mut data);
        assert_eq!(data, [b'x']);
        // Wider accesses and out-of-range offsets are ignored.
        serial.write(0, b"ab");
        serial.write(9, b"c");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
    }

    #[test]
    fn input_beyond_the_fifo_is_left_for_later() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialDevice::new(irq, Box::new(io::sink()));
        let big = vec![b'z'; 1000];
        let taken = serial.enqueue_input(&big).unwrap();
        assert!(taken < big.len());
        assert_eq!(serial.input_capacity(), 0);
        assert_eq!(serial.enqueue_input(&big).unwrap(), 0);
    }
}
