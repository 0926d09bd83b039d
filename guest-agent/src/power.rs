//! Ending the VM, and the guest-signal register writes that tell the VMM why.

use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use husk_api::guest_signal::{GuestSignal, GUEST_SIGNAL_MMIO_BASE, GUEST_SIGNAL_MMIO_SIZE};

use crate::AgentError;

/// How long processes get to exit on SIGTERM before they are killed.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// With Ctrl-Alt-Del "disabled", the kernel sends SIGINT to init instead of
/// rebooting at once, so the VMM's SendCtrlAltDel becomes an orderly power-off.
pub fn route_ctrl_alt_del_to_init() -> Result<(), AgentError> {
    // SAFETY: reboot(RB_DISABLE_CAD) only flips a kernel flag.
    if unsafe { libc::reboot(libc::RB_DISABLE_CAD) } != 0 {
        return Err(AgentError::Signals { what: "routing Ctrl-Alt-Del to init", source: io::Error::last_os_error() });
    }
    Ok(())
}

/// Writes `signal` to the guest-signal register through /dev/mem. Failure is
/// reported on the console but is not fatal: the register only informs the
/// VMM, and a VMM without it still sees the reset that follows a power-off.
pub fn signal_vmm(signal: GuestSignal) {
    if let Err(err) = write_register(signal) {
        eprintln!("husk-agent: warning: could not signal the VMM ({signal:?}): {err}");
    }
}

fn write_register(signal: GuestSignal) -> io::Result<()> {
    let (offset, byte) = signal.encode();
    let path = CString::new("/dev/mem").expect("no NUL");
    // SAFETY: path is a valid C string; the fd is checked and closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: maps one page of device memory at a fixed physical address that
    // is not guest RAM; the kernel validates the range against STRICT_DEVMEM.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUEST_SIGNAL_MMIO_SIZE as usize,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            GUEST_SIGNAL_MMIO_BASE as libc::off_t,
        )
    };
    let mapped = if page == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(page) };
    // SAFETY: fd is ours; the mapping (if any) stays valid after close.
    unsafe { libc::close(fd) };
    let page = mapped?;
    // SAFETY: offset < GUEST_SIGNAL_MMIO_SIZE, so the byte lies inside the
    // mapping; volatile because the write is an MMIO exit, not memory.
    unsafe {
        std::ptr::write_volatile(page.cast::<u8>().add(offset as usize), byte);
        libc::munmap(page, GUEST_SIGNAL_MMIO_SIZE as usize);
    }
    Ok(())
}

/// Ends every process, flushes file systems and ends the VM with `status`.
///
/// Without ACPI, `reboot(RB_POWER_OFF)` only halts the CPUs, which a VMM
/// cannot tell from an idle guest; so after the power-off register write the
/// agent resets the machine, which the kernel turns into an i8042 reset
/// (`reboot=k`) or a triple fault (`reboot=t`) and every VMM stops on.
pub fn power_off(status: u8) -> ! {
    terminate_all_processes();
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // The power-off write ends the VM at once: let the console finish
    // sending what was written to it first.
    drain_console();
    signal_vmm(GuestSignal::PowerOff { status });
    let can_power_off = std::path::Path::new("/sys/firmware/acpi").exists();
    let cmd = if can_power_off { libc::RB_POWER_OFF } else { libc::RB_AUTOBOOT };
    // SAFETY: reboot only returns on failure; we are PID 1 and hold CAP_SYS_BOOT.
    unsafe { libc::reboot(cmd) };
    eprintln!("husk-agent: reboot failed: {}; halting", io::Error::last_os_error());
    loop {
        // SAFETY: pause has no preconditions; PID 1 must not return.
        unsafe { libc::pause() };
    }
}

/// Returns once everything written to stdout and stderr has left the
/// console's transmitter.
pub fn drain_console() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let _ = std::io::Write::flush(&mut std::io::stderr());
    // SAFETY: tcdrain on the standard descriptors; fails harmlessly if they
    // are not terminals.
    unsafe {
        libc::tcdrain(1);
        libc::tcdrain(2);
    }
}

fn terminate_all_processes() {
    // SAFETY: kill(-1, …) signals every process but PID 1 itself.
    if unsafe { libc::kill(-1, libc::SIGTERM) } != 0 {
        return; // ESRCH: there are no other processes.
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        // SAFETY: reaping any child with WNOHANG has no preconditions.
        match unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } {
            -1 => return, // ECHILD: everyone is gone.
            0 => std::thread::sleep(Duration::from_millis(20)),
            _ => {}
        }
    }
    // SAFETY: as above; whatever ignored SIGTERM is killed.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: reap what the SIGKILL ended.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}
