//! Device tests. A small driver in test code lays out both queues in guest
//! memory, writes FUSE requests (fuse-backend-rs's ABI structs) into
//! descriptor chains, runs the device's queue processing and reads the
//! replies back from the used ring; the tests then check the replies and
//! the shared directory on the host.

mod device;
mod hostile;
mod ops;
mod privilege;
mod security;

use std::ffi::CString;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, FsOptions, GetxattrIn, InHeader, InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode,
    OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, RenameIn, SetattrIn, SetxattrIn, WriteIn, WriteOut, ROOT_ID,
};
use husk_api::devices::{FsCachePolicy, FsConfig};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::{Fs, FsLimits, HIPRIO_QUEUE, NUM_QUEUES, REQUEST_QUEUE};
use crate::devices::virtio::{ActivatedQueues, VirtioDevice, VirtioInterrupt};

pub(super) const MEM_SIZE: u64 = 16 << 20;
/// Queue size the test driver sets up (the device allows up to 1024).
pub(super) const RING_SIZE: u16 = 256;
/// Where each queue's rings start.
const RING_BASES: [u64; NUM_QUEUES] = [0, 0x1_0000];
/// The request buffer and the reply buffer.
pub(super) const IN_BUF: u64 = 0x10_0000;
pub(super) const OUT_BUF: u64 = 0x80_0000;
pub(super) const OUT_LEN: u32 = 0x20_0000;

/// A device reply: the out header's error (a positive errno, 0 for
/// success) and what follows the header.
#[derive(Debug)]
pub(super) struct Reply {
    pub error: i32,
    pub unique: u64,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(self) -> Result<Vec<u8>, i32> {
        if self.error == 0 {
            Ok(self.body)
        } else {
            Err(self.error)
        }
    }

    /// The reply's body as `T`, or the errno.
    pub fn obj<T: ByteValued + Default>(self) -> Result<T, i32> {
        let body = self.ok()?;
        let mut out = T::default();
        let len = size_of::<T>();
        assert!(body.len() >= len, "reply body of {} bytes, shorter than {len}", body.len());
        out.as_mut_slice().copy_from_slice(&body[..len]);
        Ok(out)
    }
}

/// One descriptor as the test driver writes it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn readable(addr: u64, len: u32) -> Self {
        Self { addr, len, flags: 0, next: 0 }
    }

    pub fn writable(addr: u64, len: u32) -> Self {
        Self { addr, len, flags: VRING_DESC_F_WRITE as u16, next: 0 }
    }
}

/// A shared directory (`share` inside a temporary `base`, so tests can
/// check nothing outside it changed), the device serving it, and the test
/// driver.
pub(super) struct Harness {
    pub base: TempDir,
    pub share: PathBuf,
    pub fs: Arc<Mutex<Fs>>,
    pub mem: Arc<GuestMemoryMmap>,
    pub irq: EventFd,
    /// Clones of the queues' notification eventfds: writing one is the
    /// driver's notification.
    pub kicks: Vec<EventFd>,
    /// The uid and gid requests carry.
    pub creds: (u32, u32),
    rings: [Rings; NUM_QUEUES],
    unique: u64,
}

#[derive(Clone, Copy)]
struct Rings {
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// Used-ring entries already collected.
    used_seen: u16,
}

pub(super) fn fs_config(shared_dir: &Path, read_only: bool) -> FsConfig {
    FsConfig {
        fs_id: "test".into(),
        tag: "testfs".into(),
        shared_dir: shared_dir.to_str().expect("UTF-8 temp path").into(),
        read_only,
        cache: FsCachePolicy::Auto,
        dax_window_mib: None,
        allow_host_root: false,
        root_uid: husk_api::devices::FS_DEFAULT_ROOT_ID,
        root_gid: husk_api::devices::FS_DEFAULT_ROOT_ID,
    }
}

pub(super) fn new_base() -> (TempDir, PathBuf) {
    let base = TempDir::new_with_prefix("/tmp/husk-fs-test-").expect("temp dir");
    let share = base.as_path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    (base, share)
}

/// Queues laid out in `mem` as a driver would, their rings emptied. Not
/// with `MockSplitQueue`: its `end()` adds the ring's length in entries,
/// not bytes, so its used ring overlaps the second half of the available
/// ring (and the 129th request reads a used entry as its head).
pub(super) fn queues_in(mem: &GuestMemoryMmap) -> (Vec<Queue>, [(GuestAddress, GuestAddress, GuestAddress); 2]) {
    use virtio_queue::QueueT;
    let mut queues = Vec::new();
    let mut addrs = [(GuestAddress(0), GuestAddress(0), GuestAddress(0)); NUM_QUEUES];
    let size = u64::from(RING_SIZE);
    for (index, base) in RING_BASES.iter().enumerate() {
        let desc_table = GuestAddress(*base);
        let avail = desc_table.unchecked_add(16 * size);
        // flags, idx, the ring, used_event; the used ring 4-byte aligned.
        let used = GuestAddress((avail.0 + 6 + 2 * size).next_multiple_of(4));
        let end = used.0 + 6 + 8 * size;
        assert!(index + 1 == NUM_QUEUES || end <= RING_BASES[index + 1], "queue {index}'s rings overlap the next");
        mem.write_slice(&vec![0u8; (end - base) as usize], desc_table).expect("empty rings");
        let mut queue = Queue::new(RING_SIZE).expect("queue");
        queue.set_size(RING_SIZE);
        queue.set_desc_table_address(Some(desc_table.0 as u32), Some((desc_table.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "queue {index}");
        queues.push(queue);
        addrs[index] = (desc_table, avail, used);
    }
    (queues, addrs)
}

impl Harness {
    pub fn new(read_only: bool) -> Self {
        Self::with_limits(read_only, FsLimits::default(), |_| {})
    }

    /// A harness whose share is populated by `populate` before the device
    /// opens it.
    pub fn with_limits(read_only: bool, limits: FsLimits, populate: impl FnOnce(&Path)) -> Self {
        Self::with_config(|config| config.read_only = read_only, limits, populate)
    }

    /// A harness whose share is configured by `configure` (from
    /// [`fs_config`], writable) and populated by `populate`.
    pub fn with_config(configure: impl FnOnce(&mut FsConfig), limits: FsLimits, populate: impl FnOnce(&Path)) -> Self {
        let (base, share) = new_base();
        populate(&share);
        let mut config = fs_config(&share, false);
        configure(&mut config);
        let fs = Fs::with_limits(&config, limits).expect("device");
        let mut harness = Self::around(base, share, fs);
        harness.activate();
        harness
    }

    /// A harness for an existing device (not yet activated).
    pub fn around(base: TempDir, share: PathBuf, fs: Fs) -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory"),
        );
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("irq eventfd");
        let placeholder =
            Rings { desc_table: GuestAddress(0), avail: GuestAddress(0), used: GuestAddress(0), used_seen: 0 };
        // SAFETY: getters without arguments or failure modes.
        let creds = unsafe { (libc::geteuid(), libc::getegid()) };
        let fs = Arc::new(Mutex::new(fs));
        Self { base, share, fs, mem, irq, kicks: Vec::new(), creds, rings: [placeholder; NUM_QUEUES], unique: 0 }
    }

    pub fn dev(&self) -> MutexGuard<'_, Fs> {
        self.fs.lock().expect("device lock")
    }

    /// Inodes and handles the guest holds.
    pub fn held(&self) -> (usize, usize) {
        self.dev().backend.fs.held()
    }

    /// (requests, errors, bad chains)
    pub fn counts(&self) -> (u64, u64, u64) {
        let m = self.dev().metrics();
        (m.requests.load(Ordering::Relaxed), m.errors.load(Ordering::Relaxed), m.bad_chains.load(Ordering::Relaxed))
    }

    /// Fresh queues (as a driver sets them up after a reset) and their
    /// activation.
    pub fn activated_queues(&mut self) -> ActivatedQueues {
        let (queues, addrs) = queues_in(&self.mem);
        for (rings, (desc_table, avail, used)) in self.rings.iter_mut().zip(addrs) {
            *rings = Rings { desc_table, avail, used, used_seen: 0 };
        }
        let queue_events: Vec<EventFd> =
            (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("queue eventfd")).collect();
        self.kicks = queue_events.iter().map(|e| e.try_clone().expect("eventfd clone")).collect();
        ActivatedQueues {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: Arc::new(VirtioInterrupt::new(self.irq.try_clone().expect("irq clone"))),
        }
    }

    pub fn activate(&mut self) {
        let queues = self.activated_queues();
        self.dev().activate(queues).expect("activate");
    }

    /// Writes `descs` at descriptor-table indices 0.., chained in order
    /// (NEXT set on all but the last), and makes index 0 available.
    pub fn push_chain(&mut self, queue: usize, descs: &[Desc]) {
        let chained: Vec<(u16, Desc)> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let last = i + 1 == descs.len();
                let flags = if last { d.flags } else { d.flags | VRING_DESC_F_NEXT as u16 };
                (i as u16, Desc { flags, next: if last { 0 } else { i as u16 + 1 }, ..*d })
            })
            .collect();
        self.push_raw(queue, &chained, 0);
    }

    /// Writes descriptors exactly as given (flags and next included) and
    /// makes `head` available.
    pub fn push_raw(&mut self, queue: usize, descs: &[(u16, Desc)], head: u16) {
        let rings = self.rings[queue];
        for (index, d) in descs {
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, d.flags, d.next));
            self.mem.write_obj(raw, rings.desc_table.unchecked_add(16 * u64::from(*index))).expect("descriptor");
        }
        let idx_addr = rings.avail.unchecked_add(2);
        let idx: u16 = self.mem.read_obj(idx_addr).expect("avail idx");
        let slot = rings.avail.unchecked_add(4 + 2 * u64::from(idx % RING_SIZE));
        self.mem.write_obj(head, slot).expect("avail ring");
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).expect("avail idx");
    }

    /// Sets the available index directly (for corrupt rings).
    pub fn set_avail_idx(&mut self, queue: usize, idx: u16) {
        self.mem.write_obj(idx, self.rings[queue].avail.unchecked_add(2)).expect("avail idx");
    }

    /// Runs the device on `queue` and returns the used-ring entries it
    /// added, as (head, length).
    pub fn run(&mut self, queue: usize) -> Vec<(u32, u32)> {
        self.dev().process_queue(queue);
        self.collect_used(queue)
    }

    pub fn collect_used(&mut self, queue: usize) -> Vec<(u32, u32)> {
        let rings = &mut self.rings[queue];
        let used_idx: u16 = self.mem.read_obj(rings.used.unchecked_add(2)).expect("used idx");
        let mut out = Vec::new();
        while rings.used_seen != used_idx {
            let elem = rings.used.unchecked_add(4 + 8 * u64::from(rings.used_seen % RING_SIZE));
            let id: u32 = self.mem.read_obj(elem).expect("used id");
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).expect("used len");
            out.push((id, len));
            rings.used_seen = rings.used_seen.wrapping_add(1);
        }
        out
    }

    /// Writes a FUSE request (header and `parts`) at IN_BUF.
    pub fn write_request(&mut self, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> (u32, u64) {
        self.unique += 1;
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        let len = (size_of::<InHeader>() + body_len) as u32;
        let header = InHeader {
            len,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.creds.0,
            gid: self.creds.1,
            pid: std::process::id(),
            padding: 0,
        };
        let mut bytes = header.as_slice().to_vec();
        for part in parts {
            bytes.extend_from_slice(part);
        }
        self.mem.write_slice(&bytes, GuestAddress(IN_BUF)).expect("request");
        (len, self.unique)
    }

    /// Sends a request on the request queue with an OUT_LEN reply buffer,
    /// and returns the reply.
    pub fn call(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> Reply {
        let (len, unique) = self.write_request(opcode as u32, nodeid, parts);
        self.push_chain(REQUEST_QUEUE, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, OUT_LEN)]);
        let used = self.run(REQUEST_QUEUE);
        assert_eq!(used.len(), 1, "one reply per request, got {used:?}");
        let reply = self.read_reply(used[0].1);
        assert_eq!(reply.unique, unique, "the reply answers the request");
        reply
    }

    /// The reply at OUT_BUF, `used_len` bytes long.
    pub fn read_reply(&self, used_len: u32) -> Reply {
        assert!(used_len as usize >= size_of::<OutHeader>(), "reply of {used_len} bytes");
        let header: OutHeader = self.mem.read_obj(GuestAddress(OUT_BUF)).expect("out header");
        assert_eq!(header.len, used_len, "the used length is the reply's");
        let mut body = vec![0u8; used_len as usize - size_of::<OutHeader>()];
        self.mem.read_slice(&mut body, GuestAddress(OUT_BUF + size_of::<OutHeader>() as u64)).expect("reply body");
        Reply { error: -header.error, unique: header.unique, body }
    }

    pub fn init(&mut self) -> InitOut {
        let flags = FsOptions::MAX_PAGES | FsOptions::BIG_WRITES | FsOptions::DO_READDIRPLUS;
        let init = InitIn { major: 7, minor: 33, max_readahead: 1 << 20, flags: flags.bits() as u32 };
        self.call(Opcode::Init, 0, &[init.as_slice()]).obj::<InitOut>().expect("INIT")
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let name = cstr(name);
        self.call(Opcode::Lookup, parent, &[name.as_bytes_with_nul()]).obj()
    }

    pub fn forget(&mut self, nodeid: u64, nlookup: u64) {
        let (len, _) = self.write_request(Opcode::Forget as u32, nodeid, &[&nlookup.to_le_bytes()]);
        // As Linux sends it: on the high-priority queue, no reply buffer.
        self.push_chain(HIPRIO_QUEUE, &[Desc::readable(IN_BUF, len)]);
        assert_eq!(self.run(HIPRIO_QUEUE), [(0, 0)]);
    }

    pub fn getattr(&mut self, nodeid: u64) -> Result<AttrOut, i32> {
        self.call(Opcode::Getattr, nodeid, &[&[0u8; 16]]).obj()
    }

    pub fn create(&mut self, parent: u64, name: &str, flags: i32, mode: u32) -> Result<(EntryOut, OpenOut), i32> {
        let args = CreateIn { flags: flags as u32, mode, umask: 0, fuse_flags: 0 };
        let name = cstr(name);
        let body = self.call(Opcode::Create, parent, &[args.as_slice(), name.as_bytes_with_nul()]).ok()?;
        let (entry, open) = body.split_at(size_of::<EntryOut>());
        Ok((from_bytes(entry), from_bytes(open)))
    }

    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<OpenOut, i32> {
        let args = OpenIn { flags: flags as u32, fuse_flags: 0 };
        self.call(Opcode::Open, nodeid, &[args.as_slice()]).obj()
    }

    pub fn opendir(&mut self, nodeid: u64) -> Result<OpenOut, i32> {
        let args = OpenIn { flags: libc::O_RDONLY as u32, fuse_flags: 0 };
        self.call(Opcode::Opendir, nodeid, &[args.as_slice()]).obj()
    }

    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let args = WriteIn { fh, offset, size: data.len() as u32, ..Default::default() };
        self.call(Opcode::Write, nodeid, &[args.as_slice(), data]).obj::<WriteOut>().map(|w| w.size)
    }

    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = ReadIn { fh, offset, size, ..Default::default() };
        self.call(Opcode::Read, nodeid, &[args.as_slice()]).ok()
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) -> Result<(), i32> {
        let args = ReleaseIn { fh, ..Default::default() };
        self.call(Opcode::Release, nodeid, &[args.as_slice()]).ok().map(drop)
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut, i32> {
        let args = MkdirIn { mode, umask: 0 };
        let name = cstr(name);
        self.call(Opcode::Mkdir, parent, &[args.as_slice(), name.as_bytes_with_nul()]).obj()
    }

    pub fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32) -> Result<EntryOut, i32> {
        let args = MknodIn { mode, rdev, umask: 0, padding: 0 };
        let name = cstr(name);
        self.call(Opcode::Mknod, parent, &[args.as_slice(), name.as_bytes_with_nul()]).obj()
    }

    pub fn rename(&mut self, olddir: u64, old: &str, newdir: u64, new: &str) -> Result<(), i32> {
        let args = RenameIn { newdir };
        let (old, new) = (cstr(old), cstr(new));
        self.call(Opcode::Rename, olddir, &[args.as_slice(), old.as_bytes_with_nul(), new.as_bytes_with_nul()])
            .ok()
            .map(drop)
    }

    pub fn link(&mut self, nodeid: u64, newparent: u64, name: &str) -> Result<EntryOut, i32> {
        let args = LinkIn { oldnodeid: nodeid };
        let name = cstr(name);
        self.call(Opcode::Link, newparent, &[args.as_slice(), name.as_bytes_with_nul()]).obj()
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(Opcode::Unlink, parent, &[name.as_bytes_with_nul()]).ok().map(drop)
    }

    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(Opcode::Rmdir, parent, &[name.as_bytes_with_nul()]).ok().map(drop)
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        let (name, target) = (cstr(name), cstr(target));
        self.call(Opcode::Symlink, parent, &[name.as_bytes_with_nul(), target.as_bytes_with_nul()]).obj()
    }

    pub fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>, i32> {
        self.call(Opcode::Readlink, nodeid, &[]).ok()
    }

    pub fn setattr(&mut self, nodeid: u64, args: SetattrIn) -> Result<AttrOut, i32> {
        self.call(Opcode::Setattr, nodeid, &[args.as_slice()]).obj()
    }

    pub fn setxattr(&mut self, nodeid: u64, name: &str, value: &[u8]) -> Result<(), i32> {
        let args = SetxattrIn { size: value.len() as u32, flags: 0 };
        let name = cstr(name);
        self.call(Opcode::Setxattr, nodeid, &[args.as_slice(), name.as_bytes_with_nul(), value]).ok().map(drop)
    }

    pub fn getxattr(&mut self, nodeid: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
        let args = GetxattrIn { size, padding: 0 };
        let name = cstr(name);
        self.call(Opcode::Getxattr, nodeid, &[args.as_slice(), name.as_bytes_with_nul()]).ok()
    }

    pub fn removexattr(&mut self, nodeid: u64, name: &str) -> Result<(), i32> {
        let name = cstr(name);
        self.call(Opcode::Removexattr, nodeid, &[name.as_bytes_with_nul()]).ok().map(drop)
    }

    /// The share's host path for `rel`.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.share.join(rel)
    }

    /// The names in the share's host directory `rel`, sorted.
    pub fn host_listing(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.host(rel))
            .expect("read_dir")
            .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

pub(super) fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in test names")
}

pub(super) fn from_bytes<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut out = T::default();
    out.as_mut_slice().copy_from_slice(&bytes[..size_of::<T>()]);
    out
}

/// A SETATTR changing only what `valid` says.
pub(super) fn setattr_in(valid: u32) -> SetattrIn {
    SetattrIn { valid, ..Default::default() }
}

pub(super) fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o7777
}

/// Every path under `dir` with its size and mode, for before/after
/// comparisons.
pub(super) fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let content = if meta.is_file() { std::fs::read(&path).expect("read") } else { Vec::new() };
        let xattrs = xattr_names(&path);
        out.push((path.clone(), meta.len(), meta.permissions().mode(), [content, xattrs].concat()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("dirent").path());
            }
        }
    }
    out.sort();
    out
}

/// The raw xattr name list of `path` (not following symlinks).
pub(super) fn xattr_names(path: &Path) -> Vec<u8> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 4096];
    // SAFETY: `c` is NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(n.max(0) as usize);
    buf
}

/// Sets a user xattr on a host file.
pub(super) fn host_setxattr(path: &Path, name: &str, value: &[u8]) {
    let (c, name) = (CString::new(path.as_os_str().as_bytes()).expect("path"), cstr(name));
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "host setxattr: {}", std::io::Error::last_os_error());
}

/// The root's node id, for readability.
pub(super) const ROOT: u64 = ROOT_ID;
