//! BSD process accounting (acct(2)): the kernel appends one record to a
//! file for every process that exits while accounting is on, with the CPU
//! time (user and system) the whole process used, its threads folded in.
//! The benches use it to charge a container start's host CPU time to the
//! processes that spent it (the engine, conmon, the runtime's CLI, husk's
//! monitor and VMM), including processes that daemonised and that nothing
//! waits for.
//!
//! Only the version 3 format (`struct acct_v3` of linux/acct.h, written by
//! kernels with CONFIG_BSD_PROCESS_ACCT_V3, as Debian's are) is read: the
//! older formats carry no pid, which the attribution needs.
//!
//! Resolution: the kernel stores CPU times in units of 1/[`AHZ`] s (10 ms),
//! truncated, from tick-sampled user and system times. A process using less
//! than 10 ms of CPU reads as 0; sums over many processes and rounds are
//! what is meaningful, not a single short process.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Units per second of a v3 record's times (linux/acct.h: `AHZ` is 100
/// whenever the v3 format is configured, whatever the kernel's HZ).
pub const AHZ: u64 = 100;
/// Bytes per v3 record: `sizeof(struct acct_v3)`.
pub const RECORD_LEN: usize = 64;
/// `ac_version` of a little-endian v3 record (a big-endian kernel sets the
/// 0x80 bit too, and is refused with the other versions).
const VERSION_V3: u8 = 3;
/// `ac_flag`: the process forked and never called exec.
pub const AFORK: u8 = 0x01;
/// `ac_flag`: the process used superuser privileges.
pub const ASU: u8 = 0x02;
/// `ac_flag`: the process dumped core.
pub const ACORE: u8 = 0x08;
/// `ac_flag`: the process was killed by a signal.
pub const AXSIG: u8 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum AcctError {
    #[error("creating the accounting file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{} has a NUL byte, which acct(2) cannot take", path.display())]
    NulInPath { path: PathBuf },
    #[error("turning process accounting on into {path}: {source}{hint}")]
    Enable { path: PathBuf, source: io::Error, hint: &'static str },
    #[error("turning process accounting off: {source}")]
    Disable { source: io::Error },
    #[error("reading the accounting file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the accounting records end in a partial record: {len} bytes is not a multiple of {RECORD_LEN} \
         (read while accounting was still on, or not an acct file)"
    )]
    Truncated { len: usize },
    #[error(
        "the accounting record at byte {offset} has version {version:#04x}, not 3 (struct acct_v3, \
         little-endian): the kernel lacks CONFIG_BSD_PROCESS_ACCT_V3, or this is not an acct file"
    )]
    Version { offset: usize, version: u8 },
}

/// Why acct(2) refused, as a hint after its error.
fn enable_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => " (acct needs CAP_SYS_PACCT: run as root, outside a container that drops it)",
        Some(libc::ENOSYS) => " (the kernel was built without CONFIG_BSD_PROCESS_ACCT)",
        Some(libc::EACCES) => " (the file must be a regular file we can write)",
        Some(libc::EROFS) | Some(libc::EIO) => " (the file system must be writable)",
        _ => "",
    }
}

/// One process's accounting record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The command name (the kernel's `comm`: the executable's file name,
    /// at most 15 bytes, or what the process set with PR_SET_NAME).
    pub comm: String,
    /// In the pid namespace of whoever turned accounting on.
    pub pid: u32,
    /// The parent when the process exited (after any reparenting).
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `ac_flag`: [`AFORK`], [`ASU`], [`ACORE`], [`AXSIG`].
    pub flags: u8,
    /// As wait(2) reports it: the exit code in bits 8..16, or the signal.
    pub exit_status: u32,
    pub user: Duration,
    pub system: Duration,
    /// From the process's start to its exit.
    pub elapsed: Duration,
    /// When the process started, in seconds since the epoch.
    pub started_at: u32,
}

impl Record {
    /// CPU time the process (all its threads) used: user + system.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }

    /// The process forked and never exec'd (a `(subshell)`, a daemon's
    /// intermediate child, a runtime's pre-exec helper).
    pub fn forked_without_exec(&self) -> bool {
        self.flags & AFORK != 0
    }

    /// The exit code, when the process exited rather than being killed.
    pub fn exit_code(&self) -> Option<u32> {
        (self.exit_status & 0x7f == 0).then_some((self.exit_status >> 8) & 0xff)
    }

    /// Decodes one `struct acct_v3`.
    pub fn parse(bytes: &[u8; RECORD_LEN]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"));
        let ticks = |at: usize| ahz_to_duration(decode_comp_t(u16_at(at)));
        let comm = &bytes[48..64];
        let comm = &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())];
        Self {
            flags: bytes[0],
            // bytes[1] is the version, bytes[2..4] the tty.
            exit_status: u32_at(4),
            uid: u32_at(8),
            gid: u32_at(12),
            pid: u32_at(16),
            ppid: u32_at(20),
            started_at: u32_at(24),
            elapsed: Duration::from_secs_f64(decode_etime(u32_at(28)) / AHZ as f64),
            user: ticks(32),
            system: ticks(34),
            // 36..48: memory, I/O, page faults, swaps (comp_t each).
            comm: String::from_utf8_lossy(comm).into_owned(),
        }
    }
}

fn ahz_to_duration(units: u64) -> Duration {
    Duration::from_millis(units * (1000 / AHZ))
}

/// A `comp_t`: a 13-bit mantissa and a 3-bit base-8 exponent.
pub fn decode_comp_t(value: u16) -> u64 {
    u64::from(value & 0x1fff) << (3 * u32::from(value >> 13))
}

/// The v3 `ac_etime`: the kernel's encode_float writes an IEEE 754 single's
/// bits (positive, normalised), in AHZ units.
pub fn decode_etime(bits: u32) -> f64 {
    f64::from(f32::from_bits(bits))
}

/// Decodes a whole accounting file's bytes.
pub fn parse_records(bytes: &[u8]) -> Result<Vec<Record>, AcctError> {
    if !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(AcctError::Truncated { len: bytes.len() });
    }
    bytes
        .chunks_exact(RECORD_LEN)
        .enumerate()
        .map(|(index, chunk)| {
            let version = chunk[1];
            if version != VERSION_V3 {
                return Err(AcctError::Version { offset: index * RECORD_LEN, version });
            }
            Ok(Record::parse(chunk.try_into().expect("chunks_exact gives RECORD_LEN bytes")))
        })
        .collect()
}

/// The records in an accounting file, in the order the processes exited.
pub fn records(path: &Path) -> Result<Vec<Record>, AcctError> {
    let bytes = std::fs::read(path).map_err(|source| AcctError::Read { path: path.to_owned(), source })?;
    parse_records(&bytes)
}

/// acct(2) is one switch per pid namespace: one [`Accounting`] at a time
/// in this process.
static SWITCH: Mutex<()> = Mutex::new(());

/// Process accounting into a file, on while this lives.
///
/// acct(2) replaces whatever accounting was on in this pid namespace (a
/// psacct service's, say) and dropping this turns accounting off: use it
/// only where nothing else accounts.
pub struct Accounting {
    path: PathBuf,
    on: bool,
    _switch: MutexGuard<'static, ()>,
}

impl Accounting {
    /// Creates (or empties) `path` and turns accounting on into it.
    pub fn start(path: &Path) -> Result<Self, AcctError> {
        let switch = SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::fs::File::create(path).map_err(|source| AcctError::Create { path: path.to_owned(), source })?;
        let c_path =
            CString::new(path.as_os_str().as_bytes()).map_err(|_| AcctError::NulInPath { path: path.to_owned() })?;
        // SAFETY: acct reads the NUL-terminated path we own; the result is checked.
        if unsafe { libc::acct(c_path.as_ptr()) } != 0 {
            let source = io::Error::last_os_error();
            let hint = enable_hint(&source);
            return Err(AcctError::Enable { path: path.to_owned(), source, hint });
        }
        Ok(Self { path: path.to_owned(), on: true, _switch: switch })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns accounting off and reads what it recorded.
    pub fn finish(mut self) -> Result<Vec<Record>, AcctError> {
        self.on = false;
        acct_off()?;
        records(&self.path)
    }
}

fn acct_off() -> Result<(), AcctError> {
    // SAFETY: acct(NULL) turns accounting off; no memory is passed.
    if unsafe { libc::acct(std::ptr::null()) } != 0 {
        return Err(AcctError::Disable { source: io::Error::last_os_error() });
    }
    Ok(())
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if self.on {
            let _ = acct_off();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn comp_t_decodes_mantissa_and_base_8_exponent() {
        assert_eq!(decode_comp_t(0), 0);
        assert_eq!(decode_comp_t(1), 1);
        assert_eq!(decode_comp_t(0x1fff), 8191);
        // Exponent 1: mantissa × 8.
        assert_eq!(decode_comp_t(0x2000 | 1024), 8192);
        // Exponent 7, largest mantissa: the largest comp_t.
        assert_eq!(decode_comp_t(0xffff), 8191 << 21);
        // The kernel's encode_comp_t(10000): shifted right by 3 once,
        // rounding up (10000 >> 3 = 1250, exact).
        assert_eq!(decode_comp_t((1 << 13) | 1250), 10000);
    }

    #[test]
    fn etime_is_an_ieee_single() {
        assert_eq!(decode_etime(0), 0.0);
        // encode_float(150): 150 = 1.171875 × 2^7.
        assert_eq!(decode_etime(0x4316_0000), 150.0);
        assert_eq!(decode_etime(1.0f32.to_bits()), 1.0);
    }

    /// A record laid out as struct acct_v3, field by field.
    fn record_bytes(comm: &[u8], pid: u32, ppid: u32, utime: u16, stime: u16, etime: f32, exit: u32) -> Vec<u8> {
        let mut b = vec![AFORK | ASU, VERSION_V3];
        b.extend_from_slice(&0u16.to_le_bytes()); // tty
        b.extend_from_slice(&exit.to_le_bytes());
        b.extend_from_slice(&1000u32.to_le_bytes()); // uid
        b.extend_from_slice(&100u32.to_le_bytes()); // gid
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&ppid.to_le_bytes());
        b.extend_from_slice(&1_700_000_000u32.to_le_bytes()); // btime
        b.extend_from_slice(&etime.to_bits().to_le_bytes());
        b.extend_from_slice(&utime.to_le_bytes());
        b.extend_from_slice(&stime.to_le_bytes());
        b.extend_from_slice(&[0u8; 12]); // mem, io, rw, minflt, majflt, swaps
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm);
        b.extend_from_slice(&name);
        assert_eq!(b.len(), RECORD_LEN);
        b
    }

    #[test]
    fn v3_records_parse_field_by_field() {
        let mut bytes = record_bytes(b"husk-vmm", 4242, 4241, 37, (1 << 13) | 1250, 250.0, 3 << 8);
        bytes.extend(record_bytes(b"fifteen-bytes-x", 7, 1, 0, 2, 0.5, libc::SIGKILL as u32));
        let records = parse_records(&bytes).unwrap();
        assert_eq!(records.len(), 2);
        let vmm = &records[0];
        assert_eq!((vmm.comm.as_str(), vmm.pid, vmm.ppid, vmm.uid, vmm.gid), ("husk-vmm", 4242, 4241, 1000, 100));
        assert_eq!(vmm.user, Duration::from_millis(370));
        assert_eq!(vmm.system, Duration::from_secs(100));
        assert_eq!(vmm.cpu(), Duration::from_millis(100_370));
        assert_eq!(vmm.elapsed, Duration::from_millis(2500));
        assert_eq!(vmm.started_at, 1_700_000_000);
        assert_eq!(vmm.exit_code(), Some(3));
        assert!(vmm.forked_without_exec() && vmm.flags & ASU != 0);
        let killed = &records[1];
        assert_eq!(killed.comm, "fifteen-bytes-x");
        assert_eq!(killed.exit_code(), None);
        assert_eq!(killed.cpu(), Duration::from_millis(20));
        assert_eq!(killed.elapsed, Duration::from_millis(5));
    }

    #[test]
    fn other_formats_and_partial_records_are_refused() {
        let mut bytes = record_bytes(b"true", 1, 0, 0, 0, 0.0, 0);
        assert!(matches!(parse_records(&bytes[..63]), Err(AcctError::Truncated { len: 63 })));
        bytes.extend(record_bytes(b"true", 2, 0, 0, 0, 0.0, 0));
        bytes[RECORD_LEN + 1] = 2; // struct acct (v2)
        match parse_records(&bytes) {
            Err(AcctError::Version { offset: 64, version: 2 }) => {}
            other => panic!("expected a version error at byte 64, got {other:?}"),
        }
        assert!(parse_records(&[]).unwrap().is_empty());
    }

    /// A child's CPU time by wait4's rusage: the kernel's precise figure.
    fn wait_cpu(child: std::process::Child) -> (u32, Duration) {
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child; status and usage point to locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(rc, pid, "wait4: {}", io::Error::last_os_error());
        let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        (status as u32, time(usage.ru_utime) + time(usage.ru_stime))
    }

    /// Turns accounting on for real (root, a kernel with
    /// CONFIG_BSD_PROCESS_ACCT_V3) and finds its children's records.
    #[test]
    fn live_accounting_records_exited_processes() {
        let path = std::env::temp_dir().join(format!("husk-acct-test-{}", std::process::id()));
        let accounting = Accounting::start(&path).unwrap_or_else(|err| {
            panic!("process accounting is unavailable here, so the benches cannot charge CPU to processes: {err}")
        });
        // A loop in the shell itself: CPU in a process that exec'd.
        let busy = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exit 3"])
            .spawn()
            .unwrap();
        let busy_pid = busy.id();
        let (busy_status, busy_cpu) = wait_cpu(busy);
        // A subshell: a process that forked and never exec'd.
        let out = Command::new("sh").args(["-c", "(echo $$ >/dev/null; exit 0); echo done"]).output().unwrap();
        assert_eq!(out.stdout, b"done\n");
        let records = accounting.finish().unwrap();
        let _ = std::fs::remove_file(&path);

        let me = std::process::id();
        let busy = records
            .iter()
            .find(|r| r.pid == busy_pid)
            .unwrap_or_else(|| panic!("no record of pid {busy_pid} among {records:#?}"));
        assert_eq!((busy.comm.as_str(), busy.ppid), ("sh", me), "{busy:?}");
        assert_eq!(busy.exit_status, busy_status);
        assert_eq!(busy.exit_code(), Some(3));
        assert!(!busy.forked_without_exec());
        // Tick-sampled and truncated to 10 ms, against wait4's figure
        // (scaled to the scheduler's runtime). In a VM the ticks lose the
        // time stolen by the hypervisor, so accounting may read lower: the
        // bounds catch a misdecoded unit or field, not that.
        let (acct_ms, rusage_ms) = (busy.cpu().as_millis() as i64, busy_cpu.as_millis() as i64);
        assert!(rusage_ms >= 50, "the loop was meant to use CPU, wait4 says {rusage_ms} ms");
        assert!(
            acct_ms <= rusage_ms + 40 && acct_ms >= rusage_ms / 2 - 40,
            "accounting says {acct_ms} ms, wait4 {rusage_ms} ms: {busy:?}"
        );
        assert!(busy.elapsed >= busy.cpu().saturating_sub(Duration::from_millis(20)), "{busy:?}");
        assert!(
            records.iter().any(|r| r.comm == "sh" && r.forked_without_exec()),
            "no forked-without-exec `sh` (the subshell) among {records:#?}"
        );
    }
}
