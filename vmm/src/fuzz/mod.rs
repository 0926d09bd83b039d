//! Entry points of the fuzz targets (`vmm/fuzz`, built with the `fuzzing`
//! feature): what a hostile guest or API client can feed the VMM, driven
//! through the interfaces the VMM itself uses.
//!
//! Each function takes the fuzzer's bytes and runs them against real
//! devices: virtio queues laid out in test guest memory by a guest driver
//! that takes every decision (descriptor addresses, lengths, flags, links,
//! ring indices, packet and request contents) from the input, devices
//! served by a real `event_manager::EventManager`, and host ends that are
//! socket pairs and Unix sockets in a temporary directory. Nothing touches
//! a host path outside that directory, a TAP device or `/dev/kvm`.
//!
//! Any input is acceptable: a panic (failed invariant, arithmetic
//! overflow, out-of-bounds index), an abort or a hang is a bug. The cargo
//! fuzz targets are one-liners over [`TARGETS`]; `cargo test -p husk-vmm`
//! replays every committed input (`vmm/fuzz/regressions/<target>/`, the
//! crashes found so far, and `vmm/fuzz/seeds/<target>/`) through the same
//! functions.

mod api;
mod driver;
mod fs;
mod mmio;
mod net;
mod vsock;

use std::time::{Duration, Instant};

pub use api::{agent_protocol, api_http, api_request};
pub use fs::{fuse, virtio_fs};
pub use mmio::virtio_mmio;
pub use net::virtio_net;
pub use vsock::{virtio_vsock, vsock_muxer};

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name of its cargo fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("virtio_net", virtio_net),
    ("virtio_vsock", virtio_vsock),
    ("vsock_muxer", vsock_muxer),
    ("virtio_fs", virtio_fs),
    ("fuse", fuse),
    ("virtio_mmio", virtio_mmio),
    ("agent_protocol", agent_protocol),
    ("api_request", api_request),
    ("api_http", api_http),
];

/// The entry point of target `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(target, _)| *target == name).map(|&(_, run)| run)
}

/// The largest file the fuzz targets may make in their temporary
/// directories.
pub const MAX_FILE_SIZE: u64 = 64 << 20;

/// Prepares a process that does nothing but fuzz (the fuzz binaries call it
/// once; tests do not, it is process-wide). Files grow to at most
/// [`MAX_FILE_SIZE`], so a guest's FALLOCATE, WRITE at a large offset or
/// COPY_FILE_RANGE fails with EFBIG instead of filling the host's disk.
/// SIGPIPE is ignored, as the Rust runtime ignores it in the VMM (libFuzzer's
/// `main` is not Rust's): a write to a host socket whose peer is gone
/// fails with EPIPE.
pub fn init_fuzz_process() {
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let limit = libc::rlimit { rlim_cur: MAX_FILE_SIZE, rlim_max: MAX_FILE_SIZE };
    // SAFETY: setrlimit reads the struct, which lives across the call.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) };
    assert_eq!(ret, 0, "setrlimit(RLIMIT_FSIZE): {}", std::io::Error::last_os_error());
    // SAFETY: ignoring a signal installs no handler code; past the limit,
    // writes then fail with EFBIG instead of killing the process.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// The fuzzer's bytes, read front to back. Reads past the end give zeros
/// (and empty slices), so every input decodes to something; drivers stop
/// when [`Input::is_empty`].
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let bytes = self.bytes(N);
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// True about once in `n` (for `n` up to 256).
    pub fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length: mostly small, sometimes anything.
    pub fn len(&mut self) -> u32 {
        match self.u8() % 4 {
            0 => u32::from(self.u8()),
            1 | 2 => u32::from(self.u16()),
            _ => self.u32(),
        }
    }

    /// Up to `max` bytes, their count read first.
    pub fn data(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()) % (max + 1);
        self.bytes(len)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// How long a target may wait for a socket peer (the API server) before
/// calling it a hang; libFuzzer's own `-timeout` is the backstop.
pub(crate) const HANG: Duration = Duration::from_secs(5);

pub(crate) fn deadline() -> Instant {
    Instant::now() + HANG
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        files
    }

    /// Every crash the fuzzers found stays fixed, and every seed runs.
    #[test]
    fn committed_inputs_replay_cleanly() {
        for &(name, run) in TARGETS {
            let seeds = inputs("seeds", name);
            assert!(!seeds.is_empty(), "target {name} has no seed in vmm/fuzz/seeds/{name}");
            for file in inputs("regressions", name).into_iter().chain(seeds) {
                let data = std::fs::read(&file).unwrap();
                eprintln!("replaying {} ({} bytes)", file.display(), data.len());
                run(&data);
            }
        }
    }

    /// The cargo fuzz binaries are exactly the targets listed here.
    #[test]
    fn every_target_has_a_fuzz_binary() {
        let dir = fuzz_dir().join("fuzz_targets");
        let mut binaries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path().file_stem().unwrap().to_str().unwrap().to_owned())
            .collect();
        binaries.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
        names.sort();
        assert_eq!(binaries, names);
        for name in names {
            let source = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap();
            assert!(source.contains(&format!("husk_vmm::fuzz::{name}(")), "{name}.rs does not run its target");
        }
    }

    #[test]
    fn input_reads_past_the_end_as_zeros() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0201);
        assert_eq!(input.u32(), 3);
        assert!(input.is_empty());
        assert_eq!(input.u64(), 0);
        assert_eq!(input.bytes(5), &[] as &[u8]);
    }
}
