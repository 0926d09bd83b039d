//! The guest-signal register (husk_api::guest_signal): the agent's
//! boot-complete write starts the boot timer's log line; its power-off
//! write ends the VM with the agent's status.

use std::sync::Arc;
use std::time::Instant;

use husk_api::guest_signal::GuestSignal;

use super::BusDevice;
use crate::metrics::METRICS;
use crate::vm_exit::{ExitSignal, VmExit};

pub struct GuestSignalDevice {
    instance_start: Instant,
    /// Log the boot time (`--boot-timer`, as Firecracker's flag).
    boot_timer: bool,
    exit: Arc<ExitSignal>,
}

impl GuestSignalDevice {
    pub fn new(instance_start: Instant, boot_timer: bool, exit: Arc<ExitSignal>) -> Self {
        Self { instance_start, boot_timer, exit }
    }
}

impl BusDevice for GuestSignalDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match GuestSignal::decode(offset, data) {
            Some(GuestSignal::BootComplete) => {
                let elapsed = self.instance_start.elapsed();
                METRICS.boot.guest_boot_time_us.add(elapsed.as_micros() as u64);
                if self.boot_timer {
                    tracing::info!(
                        "Guest-boot-time = {:>6} us {} ms (InstanceStart to the agent's ready signal)",
                        elapsed.as_micros(),
                        elapsed.as_millis()
                    );
                }
            }
            Some(GuestSignal::PowerOff { status }) => {
                tracing::info!("the guest powered off with status {status}");
                self.exit.raise(VmExit::PowerOff { status });
            }
            None => tracing::debug!("ignored guest-signal write {data:?} at offset {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_raises_the_exit_and_other_writes_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = GuestSignalDevice::new(Instant::now(), true, exit.clone());
        dev.write(0, &[123]);
        dev.write(0, &[7]);
        dev.write(1, &[1, 2]);
        assert_eq!(exit.reason(), None);
        dev.write(1, &[66]);
        assert_eq!(exit.reason(), Some(VmExit::PowerOff { status: 66 }));
    }
}
