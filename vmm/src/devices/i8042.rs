//! A minimal i8042 keyboard controller: enough for Linux's i8042 and atkbd
//! drivers to find a keyboard, so that the VMM can send Ctrl-Alt-Del, and
//! for `reboot=k` to reset the machine through it.
//!
//! vm-superio's `I8042Device` emulates only the reset command; delivering
//! keystrokes needs the controller's command byte, output buffer and
//! keyboard interrupt, which this device adds.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::metrics::METRICS;
use crate::vm_exit::{ExitSignal, ResetSource, VmExit};

/// Ports 0x60 (data) to 0x64 (status/command).
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;

const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_ECHO: u8 = 0xee;

/// Ctrl, Alt, Delete pressed then released, in scan code set 1 (what the
/// guest reads with translation on) and set 2 (without).
const CTRL_ALT_DEL_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: &[u8] = &[0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];

/// Bytes the controller holds for the guest; a guest that never reads
/// cannot make it grow past this.
const OUTPUT_CAPACITY: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    #[error("the guest has not enabled its keyboard (no i8042/atkbd driver, or it is still probing)")]
    KeyboardNotListening,
    #[error("the keyboard buffer is full: the guest is not reading it")]
    BufferFull,
    #[error("raising the keyboard interrupt: {0}")]
    Interrupt(String),
}

pub struct I8042Device {
    status: u8,
    control: u8,
    output: VecDeque<u8>,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    irq: EventFd,
    exit: Arc<ExitSignal>,
}

impl I8042Device {
    pub fn new(irq: EventFd, exit: Arc<ExitSignal>) -> Self {
        Self {
            status: STATUS_SYSTEM | STATUS_UNLOCKED,
            control: CTR_KBD_INTERRUPT | CTR_SYSTEM | CTR_TRANSLATE,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            pending: None,
            irq,
            exit,
        }
    }

    /// Sends Ctrl-Alt-Del as keystrokes; Linux turns it into SIGINT to init
    /// (the agent disables the immediate reboot).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if self.control & CTR_KBD_INTERRUPT == 0 || self.control & CTR_KBD_DISABLED != 0 {
            return Err(I8042Error::KeyboardNotListening);
        }
        let codes = if self.control & CTR_TRANSLATE != 0 { CTRL_ALT_DEL_SET1 } else { CTRL_ALT_DEL_SET2 };
        if self.output.len() + codes.len() > OUTPUT_CAPACITY {
            return Err(I8042Error::BufferFull);
        }
        METRICS.i8042.ctrl_alt_del.inc();
        for &code in codes {
            self.push(code);
        }
        self.irq.write(1).map_err(|e| I8042Error::Interrupt(e.to_string()))
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
    }

    /// Pushes a controller or keyboard reply and raises the interrupt.
    fn reply(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.push(byte);
        }
        self.interrupt();
    }

    fn interrupt(&self) {
        if self.control & CTR_KBD_INTERRUPT != 0 && !self.output.is_empty() {
            if let Err(err) = self.irq.write(1) {
                tracing::warn!("i8042 interrupt: {err}");
            }
        }
    }

    fn command(&mut self, command: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match command {
            CMD_READ_CTR => self.reply(&[self.control]),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER | CMD_WRITE_AUX_BUFFER | CMD_WRITE_TO_AUX => {
                self.pending = Some(command)
            }
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CTR_AUX_DISABLED,
            CMD_SELF_TEST => {
                self.status |= STATUS_SYSTEM;
                self.reply(&[0x55]);
            }
            CMD_TEST_KBD => self.reply(&[0x00]),
            CMD_DISABLE_KBD => self.control |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CTR_KBD_DISABLED,
            CMD_RESET_CPU => {
                METRICS.i8042.reset_requests.inc();
                tracing::info!("the guest reset the machine through the i8042");
                self.exit.raise(VmExit::Reset(ResetSource::I8042));
            }
            _ => METRICS.i8042.unknown_commands.inc(),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = byte,
            Some(CMD_WRITE_KBD_BUFFER) => self.reply(&[byte]),
            // The output port (A20, reset line) and the absent aux port.
            Some(_) => {}
            None => match byte {
                KBD_RESET => self.reply(&[KBD_ACK, 0xaa]),
                KBD_IDENTIFY => self.reply(&[KBD_ACK, 0xab, 0x83]),
                KBD_ECHO => self.reply(&[KBD_ECHO]),
                // LEDs, typematic rate, enable/disable scanning and their
                // argument bytes: acknowledged.
                _ => self.reply(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            DATA_OFFSET => {
                let byte = self.output.pop_front().unwrap_or(0);
                // One byte per interrupt: raise it again for the next one.
                self.interrupt();
                byte
            }
            COMMAND_OFFSET => {
                let full = if self.output.is_empty() { 0 } else { STATUS_OUTPUT_FULL };
                self.status | full
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            DATA_OFFSET => self.data(data[0]),
            COMMAND_OFFSET => self.command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042Device, EventFd, Arc<ExitSignal>) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        (I8042Device::new(irq.try_clone().unwrap(), exit.clone()), irq, exit)
    }

    fn read(dev: &mut I8042Device, offset: u64) -> u8 {
        let mut data = [0u8];
        dev.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn reset_command_raises_the_vm_exit() {
        let (mut dev, _, exit) = device();
        dev.write(COMMAND_OFFSET, &[0x12]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(VmExit::Reset(ResetSource::I8042)));
    }

    #[test]
    fn command_byte_reads_back_what_was_written() {
        let (mut dev, _, _) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn keyboard_commands_are_acknowledged() {
        let (mut dev, irq, _) = device();
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0xaa);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
    }

    #[test]
    fn ctrl_alt_del_follows_translation_and_needs_a_listening_keyboard() {
        let (mut dev, irq, _) = device();
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1);
        let got: Vec<u8> = (0..CTRL_ALT_DEL_SET1.len()).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(got, CTRL_ALT_DEL_SET1);

        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_KBD_INTERRUPT]);
        dev.send_ctrl_alt_del().unwrap();
        let got: Vec<u8> = (0..CTRL_ALT_DEL_SET2.len()).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(got, CTRL_ALT_DEL_SET2);

        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0]);
        assert_eq!(dev.send_ctrl_alt_del(), Err(I8042Error::KeyboardNotListening));
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut dev, _, _) = device();
        for _ in 0..10_000 {
            dev.write(DATA_OFFSET, &[KBD_RESET]);
        }
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
        assert_eq!(dev.send_ctrl_alt_del(), Err(I8042Error::BufferFull));
    }
}
