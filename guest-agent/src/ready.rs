//! Announcing that the guest is up: a record in the kernel log, a console
//! line with the kernel's uptime and that record's printk timestamp, and the
//! boot-timer write that the VMM times.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use husk_api::agent_console::{ReadyLine, READY_KMSG_TEXT};
use husk_api::guest_signal::GuestSignal;

use crate::power;

pub fn announce() {
    let uptime = uptime();
    let printk = log_ready_record().map_err(|err| eprintln!("husk-agent: warning: kernel log: {err}")).ok();
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpus = u32::try_from(online).ok();
    println!("{}", ReadyLine { uptime, printk, cpus }.format());
    // The boot-complete write makes the VMM log a line at once; a VMM that
    // sends the console to its own stdout would otherwise log it between
    // the ready line's bytes still in the tty's buffer.
    power::drain_console();
    power::signal_vmm(GuestSignal::BootComplete);
}

/// The kernel's `CLOCK_BOOTTIME`: what `/proc/uptime` shows.
pub fn uptime() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is always available");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Writes the ready record to the kernel log and reads it back for its
/// printk timestamp — the boot clock every kernel message is stamped with.
fn log_ready_record() -> io::Result<Duration> {
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")?;
    // Start reading after every record already in the log.
    // SAFETY: lseek on an fd we own; SEEK_END is how /dev/kmsg skips ahead.
    if unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&reader), 0, libc::SEEK_END) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // One write is one record, so the whole record goes in one call.
    File::options().write(true).open("/dev/kmsg")?.write_all(format!("<6>{READY_KMSG_TEXT}\n").as_bytes())?;
    let mut record = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut record) {
            Ok(n) => n,
            // EPIPE: older records were overwritten meanwhile; keep reading.
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(err) => return Err(err),
        };
        let text = String::from_utf8_lossy(&record[..n]);
        // "<prio>,<seq>,<usec>,<flags>;<message>"
        if let Some((header, message)) = text.split_once(';') {
            if message.trim_end() == READY_KMSG_TEXT {
                let usec = header.split(',').nth(2).and_then(|f| f.parse().ok());
                return usec
                    .map(Duration::from_micros)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("kmsg header {header:?}")));
            }
        }
    }
}
