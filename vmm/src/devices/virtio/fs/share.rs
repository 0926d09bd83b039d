//! The file system behind one share: fuse-backend-rs's `PassthroughFs` over
//! the shared directory, wrapped in [`ShareFs`], which adds what
//! `PassthroughFs` leaves to its embedder:
//!
//! - read-only shares: every mutating FUSE operation answers EROFS before it
//!   reaches the host file system;
//! - bounds on the host resources a guest can pin: inodes it holds (each an
//!   `O_PATH` descriptor in the VMM) and open file handles;
//! - bounds on host allocations sized by guest-controlled fields (xattr and
//!   directory buffer sizes, which `PassthroughFs` allocates up front);
//! - no device nodes, and no writes to host-privileged xattr namespaces;
//! - no privilege granted through the share (see "Privilege" below).
//!
//! Path confinement is `PassthroughFs`'s own design, which the tests check:
//! every inode is an `O_PATH | O_NOFOLLOW` descriptor opened with `*at`
//! calls relative to its parent's descriptor, names with `/` are refused,
//! `..` looked up in the root resolves to the root, only regular files and
//! directories are ever opened for I/O, and attribute changes go through
//! `/proc/self/fd` magic links, which the kernel resolves to the inode itself
//! without following a symlink further.
//!
//! # Privilege
//!
//! PassthroughFs creates files under the guest's uid and gid (switching the
//! serving thread's effective ids; the guest's root stays the VMM's root,
//! with its capabilities, so permission checks are the guest's). Whatever
//! the guest's root does, nothing it leaves in the share grants privilege
//! on the host:
//!
//! - Ownership: unless the share allows host root, a file, directory, node
//!   or symlink that a creation leaves owned by uid 0 or gid 0 (the guest's
//!   root, or a gid inherited from a setgid directory of group 0) is given
//!   the share's `root_uid` / `root_gid` before the guest hears of it, and a
//!   chown or chgrp to 0 is one to `root_uid` / `root_gid`. Other ids pass
//!   through; the guest sees the host's ids (no reverse mapping). The fix
//!   is a `fchownat` on the new inode's own `O_PATH` descriptor right after
//!   the creation, so for that instant the host holds a root-owned entry;
//!   it carries no setuid or setgid bit (stripped below), the guest cannot
//!   reach it in between (requests are served one at a time), and if the
//!   chown fails the entry is removed and the creation fails. CREATE always
//!   runs with O_EXCL, so only files it made are changed; an existing file
//!   is opened instead, as CREATE without O_EXCL would.
//! - Modes: setuid is stripped from every mode the guest asks for (CREATE,
//!   MKNOD, MKDIR, SETATTR), setgid from every one but a directory's (where
//!   it only makes new entries inherit the directory's group).
//! - killpriv: WRITE, truncation (SETATTR size, OPEN with O_TRUNC),
//!   FALLOCATE and writable DAX mappings of a regular file that has setuid,
//!   or setgid with group execute, first clear those bits on the host, as
//!   the kernel's `file_remove_privs` does, whether or not the guest asked
//!   (FUSE_WRITE_KILL_SUIDGID). It costs one `fstat` per write. The host
//!   kernel itself drops `security.capability` on every write and
//!   truncation, whoever writes; FALLOCATE and DAX mappings drop it here.
//!   The guest's own kill-privilege flags are then removed from the
//!   request: PassthroughFs would act on them by dropping CAP_FSETID around
//!   the call (capget and capset each time) for the same effect.
//! - File capabilities: setting `security.capability` is refused (EPERM)
//!   unless the share allows host root.
//! - Device nodes: refused (EPERM) whatever the share; OPEN with O_TMPFILE
//!   (which a guest kernel never sends: it would use FUSE_TMPFILE, not
//!   served) is refused too.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FOPEN_IN_KILL_SUIDGID, WRITE_KILL_PRIV};
use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::FsCacheReqHandler;
use husk_api::devices::FsCachePolicy;

/// Linux's XATTR_SIZE_MAX and XATTR_LIST_MAX: no value or name list is
/// larger, so a bigger buffer size from the guest is clamped without
/// changing any answer.
const XATTR_MAX: u32 = 64 * 1024;

/// The largest directory listing buffer allocated for one READDIR. The
/// kernel asks for a page at a time; a larger request only gets fewer
/// entries than it had room for, which READDIR allows.
const READDIR_MAX: u32 = 1 << 20;

/// How many host objects one share lets the guest hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsLimits {
    /// Inodes the guest holds (looked up and not yet forgotten), the root
    /// excepted. Each is an open `O_PATH` descriptor in the VMM; past the
    /// limit, lookups and creations answer ENFILE until the guest forgets
    /// some.
    pub max_inodes: usize,
    /// Open files and directories (FUSE handles), each an open descriptor
    /// in the VMM; past the limit, OPEN, OPENDIR and CREATE answer EMFILE.
    pub max_handles: usize,
}

impl Default for FsLimits {
    fn default() -> Self {
        Self { max_inodes: 1 << 18, max_handles: 1 << 14 }
    }
}

/// Descriptors the VMM keeps for everything but its shares' inodes and
/// handles: guest memory, KVM, eventfds, the API and vsock sockets, logs.
pub const VMM_FD_RESERVE: u64 = 1024;

/// Descriptors one share holds beside the guest's inodes and handles: its
/// root, `/proc/self/fd`, the mount table, and those a request opens for
/// its duration.
pub const SHARE_FD_OVERHEAD: u64 = 8;

/// The fewest inodes and handles a share gets however low the descriptor
/// limit: below this no guest could use it.
const MIN_LIMITS: FsLimits = FsLimits { max_inodes: 64, max_handles: 16 };

impl FsLimits {
    /// Descriptors a guest can make the VMM hold through one share.
    pub fn fds(&self) -> u64 {
        (self.max_inodes as u64).saturating_add(self.max_handles as u64).saturating_add(SHARE_FD_OVERHEAD)
    }

    /// The limits each of `shares` shares gets so that all of them
    /// exhausted together, plus [`VMM_FD_RESERVE`], stay within `nofile`
    /// descriptors (the VMM's RLIMIT_NOFILE): the defaults, or less in the
    /// defaults' proportions (16 inodes to a handle), but never below a
    /// usable floor (then the bound can exceed `nofile`; see
    /// [`FsLimits::fit`]).
    pub fn within(nofile: u64, shares: usize) -> FsLimits {
        let default = FsLimits::default();
        let shares = shares.max(1) as u64;
        let per_share = nofile.saturating_sub(VMM_FD_RESERVE) / shares;
        if per_share >= default.fds() {
            return default;
        }
        let guest_fds = per_share.saturating_sub(SHARE_FD_OVERHEAD);
        let handles = (guest_fds / 17).max(MIN_LIMITS.max_handles as u64);
        let inodes = guest_fds.saturating_sub(handles).max(MIN_LIMITS.max_inodes as u64);
        FsLimits { max_inodes: inodes as usize, max_handles: handles as usize }
    }

    /// Whether `shares` shares at these limits fit in `nofile` descriptors
    /// beside [`VMM_FD_RESERVE`].
    pub fn fit(&self, nofile: u64, shares: usize) -> bool {
        self.fds().saturating_mul(shares as u64).saturating_add(VMM_FD_RESERVE) <= nofile
    }
}

/// The RLIMIT_NOFILE a VMM with `shares` virtio-fs shares needs for each to
/// get the default [`FsLimits`]: whatever sets the VMM's descriptor limit
/// (a jail, a service manager) should allow at least this much. With less,
/// the shares get smaller limits ([`FsLimits::within`]) rather than let a
/// guest exhaust the VMM's descriptors.
pub fn fd_budget(shares: usize) -> u64 {
    FsLimits::default().fds().saturating_mul(shares as u64).saturating_add(VMM_FD_RESERVE)
}

/// The process's current RLIMIT_NOFILE (its soft limit), or None if it is
/// unlimited or cannot be read.
pub fn current_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// How a share writes the owners of what the guest creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owners {
    /// The guest's ids are written as they are, 0 included.
    pub allow_host_root: bool,
    /// What uid 0 becomes otherwise.
    pub root_uid: u32,
    /// What gid 0 becomes otherwise.
    pub root_gid: u32,
}

impl Default for Owners {
    fn default() -> Self {
        Self {
            allow_host_root: false,
            root_uid: husk_api::devices::FS_DEFAULT_ROOT_ID,
            root_gid: husk_api::devices::FS_DEFAULT_ROOT_ID,
        }
    }
}

impl Owners {
    /// The owner to write for `uid` and `gid`: None where it stays.
    fn squash(&self, uid: u32, gid: u32) -> (Option<u32>, Option<u32>) {
        if self.allow_host_root {
            return (None, None);
        }
        ((uid == 0).then_some(self.root_uid), (gid == 0).then_some(self.root_gid))
    }
}

/// What a share serves and how; everything needed to build its file system
/// again for a new FUSE session.
#[derive(Clone, Debug)]
pub(super) struct ShareConfig {
    /// Canonical, UTF-8 (PassthroughFs takes a `String`), checked to be a
    /// directory.
    pub root_dir: String,
    pub read_only: bool,
    pub cache: FsCachePolicy,
    pub limits: FsLimits,
    /// The device has a DAX window: the guest may map files into it.
    pub dax: bool,
    pub owners: Owners,
}

impl ShareConfig {
    /// The PassthroughFs configuration for this share.
    fn passthrough_config(&self) -> Config {
        // Timeouts follow virtiofsd's choices for the same policies: with
        // `never` nothing is cached, so host-side changes show at once;
        // `auto` revalidates after a second; `always` trusts the guest's
        // cache for a day (the share is the guest's alone).
        let (cache_policy, timeout) = match self.cache {
            FsCachePolicy::Never => (CachePolicy::Never, Duration::ZERO),
            FsCachePolicy::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
            FsCachePolicy::Always => (CachePolicy::Always, Duration::from_secs(86_400)),
        };
        // Every field is spelled out: an option a later fuse-backend-rs adds
        // fails to compile here until someone decides it.
        Config {
            root_dir: self.root_dir.clone(),
            cache_policy,
            entry_timeout: timeout,
            attr_timeout: timeout,
            dir_entry_timeout: None,
            dir_attr_timeout: None,
            // Container images carry file capabilities and other xattrs;
            // which names the guest may write is decided in `setxattr`.
            xattr: true,
            // The guest kernel then leaves clearing setuid/setgid bits on
            // write to the server instead of asking for
            // security.capability before every write.
            killpriv_v2: true,
            // Writeback caching would let the guest reorder and merge
            // writes the host sees; the share is not necessarily the
            // guest's alone.
            writeback: false,
            // Validate names (no "/", ".", ".." or empty) in every
            // creating or removing operation: PassthroughFs does so only
            // when it imports its root itself, as here.
            do_import: true,
            // O_PATH descriptors rather than file handles: reopening file
            // handles needs CAP_DAC_READ_SEARCH and file systems that
            // support them.
            inode_file_handles: false,
            no_open: false,
            no_opendir: false,
            no_readdir: false,
            seal_size: false,
            enable_mntid: false,
            // With a DAX window, every file may be mapped: a guest that
            // mounts with dax=inode gets FUSE_ATTR_DAX on all of them (with
            // dax=always it maps every file regardless). Without one, none.
            dax_file_size: self.dax.then_some(0),
            use_host_ino: false,
            allow_direct_io: true,
        }
    }
}

/// Serialises this module's changes to the process's umask (and lets tests
/// look at it between them).
pub(super) static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// The process's file mode creation mask at zero for as long as it lives,
/// then restored.
///
/// PassthroughFs needs umask 0 (the guest has applied its own umask to the
/// modes it asks for), and sets it for the whole process each time it opens
/// its root (at construction, INIT and DESTROY). Left that way, every file
/// the rest of the VMM creates would get exactly the mode it asks for: 0666
/// for `File::create`, 0777 for a Unix socket. So the mask is zero only
/// around the PassthroughFs calls that open the root or create files. It is
/// per process, so a file another thread creates inside such a window gets
/// no masking; the VMM's other threads seldom create files, and should give
/// explicit modes where it matters.
struct ZeroUmask {
    saved: libc::mode_t,
    _serial: MutexGuard<'static, ()>,
}

impl ZeroUmask {
    fn new() -> Self {
        let serial = lock(&UMASK_LOCK);
        // SAFETY: umask only swaps the process's creation mask; it cannot
        // fail.
        let saved = unsafe { libc::umask(0) };
        Self { saved, _serial: serial }
    }
}

impl Drop for ZeroUmask {
    fn drop(&mut self) {
        // SAFETY: as in `new`. Runs before `_serial` is released.
        unsafe { libc::umask(self.saved) };
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain counters that are consistent after every
    // statement, so a panic elsewhere while one was held leaves them usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// O_TMPFILE without its O_DIRECTORY part: an unnamed new file.
const O_TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// Guest flags a READ or WRITE may apply to its handle. fuse-backend-rs
/// (0.14.0, passthrough read and write) applies the request's flags with
/// fcntl(F_SETFL) after wrapping the handle's descriptor in a `File`, which
/// it drops when that call fails: it closes the descriptor the handle still
/// owns, and its number, reused by the next open, is closed again when the
/// handle is released (found by the `fuse` fuzz target). So only the flags
/// F_SETFL cannot refuse on an open file reach it: O_DIRECT (EINVAL where
/// the host's file system lacks it), O_NOATIME (EPERM on others' files) and
/// O_ASYNC are dropped, and O_PATH handles are never made (see `open`,
/// `create` and `opendir`).
fn io_flags(flags: u32) -> u32 {
    flags & (libc::O_APPEND | libc::O_NONBLOCK) as u32
}

/// Whether OPEN flags would let the handle change the file (or create one).
fn open_flags_mutate(flags: u32) -> bool {
    let flags = flags as i32;
    // Linux truncates on O_RDONLY | O_TRUNC too.
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT | O_TMPFILE_ONLY) != 0
}

/// `mode` without what the guest may not set: setuid always, setgid on
/// anything but a directory (where it only passes the directory's group
/// on to new entries).
fn unprivileged_mode(mode: u32, dir: bool) -> u32 {
    let strip = if dir { libc::S_ISUID } else { libc::S_ISUID | libc::S_ISGID };
    mode & !strip
}

/// The bits a write to a file of `mode` must clear, as the kernel's
/// `file_remove_privs`: setuid, and setgid with group execute (setgid
/// without it marks mandatory locking, not privilege). Only regular files
/// are written.
fn privileged_bits(mode: u32) -> u32 {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return 0;
    }
    let mut bits = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        bits |= libc::S_ISGID;
    }
    bits
}

/// The xattr holding a file's capabilities.
const CAPABILITY_XATTR: &CStr = c"security.capability";

/// A `stat64` of zeroes, for SETATTR arguments (only the fields `valid`
/// names are read).
fn zeroed_stat() -> stat64 {
    // SAFETY: stat64 is plain integers, for which all zeroes is valid.
    unsafe { std::mem::zeroed() }
}

/// The xattr names a guest may set or remove. Others live in namespaces
/// the host kernel reserves to privileged processes (`trusted.*`, LSM
/// labels in `security.*`), which the VMM, often root, could otherwise be
/// made to write on the guest's behalf: overlayfs metadata on a host
/// overlay layer, SELinux labels.
fn xattr_name_writable(name: &CStr) -> bool {
    let name = name.to_bytes();
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// A share's file system: `PassthroughFs` plus the policies in the module
/// documentation. Every `FileSystem` method is implemented, so nothing
/// silently falls back to a trait default.
pub(super) struct ShareFs {
    inner: PassthroughFs<()>,
    read_only: bool,
    limits: FsLimits,
    dax: bool,
    owners: Owners,
    /// Lookup counts of the inodes the guest holds, kept by the same rules
    /// as PassthroughFs's own counts: +1 for every entry handed to the
    /// guest, -n on FORGET, gone at zero, the root never counted.
    inodes: Mutex<HashMap<u64, u64>>,
    /// Handles handed out and not yet released.
    handles: Mutex<HashSet<u64>>,
}

impl ShareFs {
    pub fn new(config: &ShareConfig) -> io::Result<Self> {
        let inner = PassthroughFs::<()>::new(config.passthrough_config())?;
        // Opens the root now, so a share that cannot be served fails here,
        // at configuration, rather than at the guest's mount.
        {
            let _umask = ZeroUmask::new();
            inner.import()?;
        }
        Ok(Self {
            inner,
            read_only: config.read_only,
            limits: config.limits,
            dax: config.dax,
            owners: config.owners,
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashSet::new()),
        })
    }

    fn refuse_if_read_only(&self) -> io::Result<()> {
        if self.read_only {
            return Err(errno(libc::EROFS));
        }
        Ok(())
    }

    /// Refuses an operation that would hand the guest a new inode when it
    /// already holds as many as allowed. Checked before creating anything,
    /// so a refused creation leaves the host untouched.
    fn check_inode_room(&self) -> io::Result<()> {
        if lock(&self.inodes).len() >= self.limits.max_inodes {
            return Err(errno(libc::ENFILE));
        }
        Ok(())
    }

    /// Counts an entry PassthroughFs handed out (it has already counted it
    /// itself).
    fn count_entry(&self, inode: u64) {
        if inode != ROOT_ID {
            let mut inodes = lock(&self.inodes);
            let count = inodes.entry(inode).or_insert(0);
            *count = count.saturating_add(1);
        }
    }

    /// Counts a looked-up entry if the limit allows it; otherwise undoes
    /// the lookup in PassthroughFs (closing the descriptor it may have
    /// opened) and answers ENFILE.
    fn admit_entry(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        if entry.inode == ROOT_ID {
            return Ok(entry);
        }
        let mut inodes = lock(&self.inodes);
        if let Some(count) = inodes.get_mut(&entry.inode) {
            *count = count.saturating_add(1);
            return Ok(entry);
        }
        if inodes.len() >= self.limits.max_inodes {
            drop(inodes);
            self.inner.forget(ctx, entry.inode, 1);
            return Err(errno(libc::ENFILE));
        }
        inodes.insert(entry.inode, 1);
        Ok(entry)
    }

    fn uncount_entry(&self, inode: u64, count: u64) {
        let mut inodes = lock(&self.inodes);
        if let Some(held) = inodes.get_mut(&inode) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                inodes.remove(&inode);
            }
        }
    }

    fn check_handle_room(&self) -> io::Result<()> {
        if lock(&self.handles).len() >= self.limits.max_handles {
            return Err(errno(libc::EMFILE));
        }
        Ok(())
    }

    fn count_handle(&self, handle: Option<u64>) {
        if let Some(handle) = handle {
            lock(&self.handles).insert(handle);
        }
    }

    /// Gives an entry the guest just created the owner the share's
    /// [`Owners`] want (a no-op for most entries). If that fails, the entry
    /// is removed again (`dir`: with rmdir) and forgotten, and the error
    /// answered: nothing the guest made stays owned by host root.
    fn settle_owner(&self, ctx: &Context, parent: u64, name: &CStr, mut entry: Entry, dir: bool) -> io::Result<Entry> {
        let (uid, gid) = self.owners.squash(entry.attr.st_uid, entry.attr.st_gid);
        if uid.is_none() && gid.is_none() {
            return Ok(entry);
        }
        let mut attr = zeroed_stat();
        let mut valid = SetattrValid::empty();
        if let Some(uid) = uid {
            attr.st_uid = uid;
            valid |= SetattrValid::UID;
        }
        if let Some(gid) = gid {
            attr.st_gid = gid;
            valid |= SetattrValid::GID;
        }
        // fchownat on the inode's own O_PATH descriptor (AT_EMPTY_PATH,
        // AT_SYMLINK_NOFOLLOW): the new entry itself, a symlink included.
        match self.inner.setattr(ctx, entry.inode, attr, None, valid) {
            Ok((st, _)) => {
                entry.attr = st;
                Ok(entry)
            }
            Err(err) => {
                let removed =
                    if dir { self.inner.rmdir(ctx, parent, name) } else { self.inner.unlink(ctx, parent, name) };
                if let Err(remove_err) = removed {
                    tracing::error!("virtio-fs: removing {name:?} after failing to chown it ({err}): {remove_err}");
                }
                self.inner.forget(ctx, entry.inode, 1);
                Err(err)
            }
        }
    }

    /// Clears setuid and setgid on a regular file about to be written, as
    /// the kernel's `file_remove_privs` would (whatever the guest asked);
    /// with `capability`, its `security.capability` too (the host kernel
    /// drops that itself on writes and truncation, not on every file
    /// system's fallocate, nor for writes through a DAX mapping). One fstat
    /// (on `handle` when given) when there is nothing to clear.
    pub(super) fn remove_privs(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
        capability: bool,
    ) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, handle)?;
        let bits = privileged_bits(st.st_mode);
        if bits != 0 {
            let mut attr = zeroed_stat();
            attr.st_mode = st.st_mode & 0o7777 & !bits;
            self.inner.setattr(ctx, inode, attr, handle, SetattrValid::MODE)?;
        }
        if capability && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            match self.inner.removexattr(ctx, inode, CAPABILITY_XATTR) {
                Err(err) if err.raw_os_error() != Some(libc::ENODATA) => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }

    /// CREATE that changes only files it made: with O_EXCL, then, if the
    /// name exists and the guest did not ask for O_EXCL, a LOOKUP and OPEN
    /// of the existing file (what PassthroughFs does in that case).
    fn create_settled(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        // (A new file has nothing to kill; FOPEN_IN_KILL_SUIDGID is for the
        // existing one, handled below.)
        let exclusive = CreateIn {
            flags: args.flags | libc::O_EXCL as u32,
            fuse_flags: args.fuse_flags & !FOPEN_IN_KILL_SUIDGID,
            ..args
        };
        let created = {
            let _umask = ZeroUmask::new();
            self.inner.create(ctx, parent, name, exclusive)
        };
        match created {
            Ok((entry, handle, opts, passthrough)) => {
                let settled = self.settle_owner(ctx, parent, name, entry, false);
                if settled.is_err() {
                    if let Some(handle) = handle {
                        let _ = self.inner.release(ctx, entry.inode, args.flags, handle, false, false, None);
                    }
                }
                Ok((settled?, handle, opts, passthrough))
            }
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) && args.flags & libc::O_EXCL as u32 == 0 => {
                let entry = self.inner.lookup(ctx, parent, name)?;
                let flags = args.flags & !(libc::O_CREAT as u32);
                if flags as i32 & libc::O_TRUNC != 0 {
                    if let Err(err) = self.remove_privs(ctx, entry.inode, None, false) {
                        self.inner.forget(ctx, entry.inode, 1);
                        return Err(err);
                    }
                }
                match self.inner.open(ctx, entry.inode, flags, args.fuse_flags & !FOPEN_IN_KILL_SUIDGID) {
                    Ok((handle, opts, passthrough)) => Ok((entry, handle, opts, passthrough)),
                    Err(err) => {
                        self.inner.forget(ctx, entry.inode, 1);
                        Err(err)
                    }
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Held inodes and handles, for tests.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        (lock(&self.inodes).len(), lock(&self.handles).len())
    }
}

impl FileSystem for ShareFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // PassthroughFs opens its root again.
        let mut want = {
            let _umask = ZeroUmask::new();
            self.inner.init(capable)?
        };
        // Requests of up to 1 MiB (the server's buffer limit) instead of
        // one page: the descriptor chains carry them directly.
        want |= FsOptions::BIG_WRITES | FsOptions::MAX_PAGES;
        // PassthroughFs offers per-file DAX (FUSE_HAS_INODE_DAX, which the
        // guest asks for when mounting with dax=inode) whenever the guest
        // does; it only makes sense with a window to map files into. A guest
        // mounting with dax=always needs no flag, only the window (and
        // SETUPMAPPING, refused without one).
        if !self.dax {
            want.remove(FsOptions::PERFILE_DAX);
        }
        if self.read_only {
            want.remove(FsOptions::WRITEBACK_CACHE | FsOptions::HANDLE_KILLPRIV_V2);
        }
        Ok(want)
    }

    fn destroy(&self) {
        // PassthroughFs drops every inode and handle and opens its root
        // again for the next session.
        {
            let _umask = ZeroUmask::new();
            self.inner.destroy();
        }
        lock(&self.inodes).clear();
        lock(&self.handles).clear();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.admit_entry(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count);
        self.uncount_entry(inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for &(inode, count) in &requests {
            self.uncount_entry(inode, count);
        }
        self.inner.batch_forget(ctx, requests);
    }

    fn getattr(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.refuse_if_read_only()?;
        let mut attr = attr;
        if valid.contains(SetattrValid::MODE) {
            // The file type the guest sends along can be a lie; the host's
            // decides whether setgid may stay.
            let (st, _) = self.inner.getattr(ctx, inode, None)?;
            let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            attr.st_mode = unprivileged_mode(attr.st_mode, dir);
        }
        let (uid, gid) = self.owners.squash(attr.st_uid, attr.st_gid);
        if let (true, Some(uid)) = (valid.contains(SetattrValid::UID), uid) {
            attr.st_uid = uid;
        }
        if let (true, Some(gid)) = (valid.contains(SetattrValid::GID), gid) {
            attr.st_gid = gid;
        }
        let mut valid = valid;
        if valid.contains(SetattrValid::SIZE) {
            self.remove_privs(ctx, inode, handle, false)?;
            valid.remove(SetattrValid::KILL_SUIDGID);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.refuse_if_read_only()?;
        self.check_inode_room()?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        let entry = self.settle_owner(ctx, parent, name, entry, false)?;
        self.count_entry(entry.inode);
        Ok(entry)
    }

    fn mknod(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, rdev: u32, umask: u32) -> io::Result<Entry> {
        self.refuse_if_read_only()?;
        // A device node made by the guest would be a real one on the host,
        // opening host devices to whatever host process later reads the
        // share; the guest has its own /dev. FIFOs and sockets are harmless
        // (the server never opens them).
        if matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) {
            return Err(errno(libc::EPERM));
        }
        self.check_inode_room()?;
        let mode = unprivileged_mode(mode, false);
        let entry = {
            let _umask = ZeroUmask::new();
            self.inner.mknod(ctx, parent, name, mode, rdev, umask)?
        };
        let entry = self.settle_owner(ctx, parent, name, entry, false)?;
        self.count_entry(entry.inode);
        Ok(entry)
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.refuse_if_read_only()?;
        self.check_inode_room()?;
        let mode = unprivileged_mode(mode, true);
        let entry = {
            let _umask = ZeroUmask::new();
            self.inner.mkdir(ctx, parent, name, mode, umask)?
        };
        let entry = self.settle_owner(ctx, parent, name, entry, true)?;
        self.count_entry(entry.inode);
        Ok(entry)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.refuse_if_read_only()?;
        // No room check: the entry is the inode the guest names, which it
        // already holds.
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.count_entry(entry.inode);
        Ok(entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if open_flags_mutate(flags) {
            self.refuse_if_read_only()?;
        }
        if flags as i32 & O_TMPFILE_ONLY != 0 {
            // A guest kernel makes unnamed files with FUSE_TMPFILE, which is
            // not served; this would make one owned by the VMM's ids.
            return Err(errno(libc::EOPNOTSUPP));
        }
        if flags as i32 & libc::O_PATH != 0 {
            // A guest kernel never sends it; a handle on an O_PATH
            // descriptor fails every fcntl(F_SETFL) (see `io_flags`).
            return Err(errno(libc::EINVAL));
        }
        self.check_handle_room()?;
        if flags as i32 & libc::O_TRUNC != 0 {
            self.remove_privs(ctx, inode, None, false)?;
        }
        let opened = self.inner.open(ctx, inode, flags, fuse_flags & !FOPEN_IN_KILL_SUIDGID)?;
        self.count_handle(opened.0);
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.refuse_if_read_only()?;
        if args.flags as i32 & (O_TMPFILE_ONLY | libc::O_PATH) != 0 {
            return Err(errno(libc::EINVAL));
        }
        self.check_inode_room()?;
        self.check_handle_room()?;
        let args = CreateIn { mode: unprivileged_mode(args.mode, false), ..args };
        let created = self.create_settled(ctx, parent, name, args)?;
        self.count_entry(created.0.inode);
        self.count_handle(created.1);
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, io_flags(flags))
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.refuse_if_read_only()?;
        self.remove_privs(ctx, inode, Some(handle), false)?;
        let fuse_flags = fuse_flags & !WRITE_KILL_PRIV;
        let flags = io_flags(flags);
        self.inner.write(ctx, inode, handle, r, size, offset, lock_owner, delayed_write, flags, fuse_flags)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(&self, ctx: &Context, inode: u64, handle: u64, mode: u32, offset: u64, length: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.remove_privs(ctx, inode, Some(handle), true)?;
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        lock(&self.handles).remove(&handle);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.refuse_if_read_only()?;
        if !xattr_name_writable(name) {
            return Err(errno(libc::EPERM));
        }
        // File capabilities are privilege on the host as much as setuid.
        if name == CAPABILITY_XATTR && !self.owners.allow_host_root {
            return Err(errno(libc::EPERM));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(&self, ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.refuse_if_read_only()?;
        if !xattr_name_writable(name) {
            return Err(errno(libc::EPERM));
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(&self, ctx: &Context, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if flags as i32 & libc::O_PATH != 0 {
            // A READ or WRITE may name a directory's handle (see `io_flags`).
            return Err(errno(libc::EINVAL));
        }
        self.check_handle_room()?;
        let opened = self.inner.opendir(ctx, inode, flags)?;
        self.count_handle(opened.0);
        Ok(opened)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size.min(READDIR_MAX), offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut added = false;
        self.inner.readdirplus(ctx, inode, handle, size.min(READDIR_MAX), offset, &mut |dir_entry, entry| {
            let ino = entry.inode;
            let held = ino == ROOT_ID || lock(&self.inodes).contains_key(&ino);
            if !held && self.check_inode_room().is_err() {
                if added {
                    // Ends this listing early, as a full buffer does;
                    // PassthroughFs drops the lookup it took for the entry,
                    // and the guest asks again from this offset.
                    return Ok(0);
                }
                // Nothing listed yet: an empty answer would read as the
                // end of the directory, so fail the READDIRPLUS instead
                // (and undo PassthroughFs's count, as below).
                self.inner.forget(ctx, ino, 1);
                return Err(errno(libc::ENFILE));
            }
            let result = add_entry(dir_entry, entry);
            match result {
                // A full buffer: PassthroughFs drops its lookup.
                Ok(0) => {}
                Ok(_) => {
                    self.count_entry(ino);
                    added = true;
                }
                // The entry did not reach the guest, which will never
                // forget it, but PassthroughFs keeps its count when the
                // callback fails: drop that count here so the inode is not
                // pinned for the rest of the session.
                Err(_) => self.inner.forget(ctx, ino, 1),
            }
            result
        })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        lock(&self.handles).remove(&handle);
        Ok(())
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            self.refuse_if_read_only()?;
            // The guest's stores through the mapping reach the file
            // without a write the host kernel sees.
            self.remove_privs(ctx, inode, None, true)?;
        }
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: u64,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        // access(2) on a read-only mount answers EROFS for W_OK.
        if mask & libc::W_OK as u32 != 0 {
            self.refuse_if_read_only()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(&self, ctx: &Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // PassthroughFs answers no ioctl (ENOTTY); delegated so that stays
        // its decision. Some ioctls change files (FS_IOC_SETFLAGS), so a
        // read-only share refuses all of them.
        self.refuse_if_read_only()?;
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(&self, ctx: &Context, inode: u64, handle: u64, khandle: u64, flags: u32, events: u32) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_that_mutate() {
        for flags in [libc::O_RDONLY, libc::O_RDONLY | libc::O_APPEND, libc::O_RDONLY | libc::O_DIRECTORY] {
            assert!(!open_flags_mutate(flags as u32), "{flags:#o}");
        }
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_ACCMODE,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_CREAT,
            libc::O_TMPFILE | libc::O_RDWR,
        ] {
            assert!(open_flags_mutate(flags as u32), "{flags:#o}");
        }
    }

    #[test]
    fn writable_xattr_names() {
        for name in [c"user.x", c"security.capability", c"system.posix_acl_access", c"system.posix_acl_default"] {
            assert!(xattr_name_writable(name), "{name:?}");
        }
        for name in [c"trusted.overlay.opaque", c"security.selinux", c"security.capability2", c"system.foo", c"user"] {
            assert!(!xattr_name_writable(name), "{name:?}");
        }
    }
}
