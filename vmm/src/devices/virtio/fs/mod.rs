//! virtio-fs (virtio 1.2, section 5.11): a host directory shared with the
//! guest, served inside the VMM by fuse-backend-rs.
//!
//! The device has two queues, both carrying FUSE requests: queue 0 is the
//! high-priority queue (FORGET, BATCH_FORGET; never answered) and queue 1
//! the one request queue. Its configuration space is the mount tag (36
//! bytes, NUL-padded) followed by `num_request_queues` (le32, 1). It offers
//! no feature bits of its own.
//!
//! Requests are served on the event loop, one chain at a time, by a
//! fuse-backend-rs [`Server`] over the share's file system: fuse-backend-rs's
//! passthrough file system over the shared directory, plus husk's policies
//! (read-only shares, caps on the inodes and handles a guest can hold, no
//! device nodes, no writes to host-privileged xattrs, no privilege granted:
//! the guest's root squashed to `root_uid` / `root_gid` unless the share
//! allows host root, no setuid bits, setuid and setgid cleared on writes).
//! The `share` module says what confines the guest to the shared directory
//! and how privilege is kept out of it.
//!
//! Descriptors: every inode and handle the guest holds is a descriptor in
//! the VMM, bounded per share by [`FsLimits`]. The VMM builds its shares
//! with [`share_limits`], which fits the limits of all of them (plus
//! [`VMM_FD_RESERVE`]) in its RLIMIT_NOFILE, so a guest exhausting one
//! share gets ENFILE / EMFILE from it while the other shares and devices
//! keep working; [`fd_budget`] is the RLIMIT_NOFILE that gives every share
//! the default limits.
//!
//! Each FUSE request from the guest runs under the uid and gid its header
//! names for the calls that create files (PassthroughFs switches the event
//! loop thread's effective ids around them, which needs the VMM to run as
//! root for ids other than its own); the rest runs with the VMM's own
//! credentials, and the guest kernel checks permissions (virtio-fs mounts
//! with `default_permissions`).
//!
//! A FUSE session lasts from the guest's INIT to its DESTROY (unmount) or
//! to a device reset. DESTROY makes the file system drop every inode and
//! handle of the session; a reset builds a fresh file system, so nothing a
//! previous driver (or a previous guest kernel) opened survives it.
//!
//! The DAX window, when configured (`dax_window_mib`), is the device's
//! shared memory region 0: the guest maps file ranges into it with
//! FUSE_SETUPMAPPING and reads and writes the host's page cache directly
//! (see the `dax` module). Without one, FUSE_SETUPMAPPING answers EINVAL
//! and a guest mount with `dax` fails.
//!
//! Not supported: the notification queue and more than one request queue.

mod dax;
mod request;
mod share;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FsCacheReqHandler;
use husk_api::devices::{FsConfig, FS_TAG_MAX};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use dax::DaxWindow;
pub use dax::DAX_SHM_ID;
pub use share::{current_fd_limit, fd_budget, FsLimits, SHARE_FD_OVERHEAD, VMM_FD_RESERVE};
use share::{Owners, ShareConfig, ShareFs};

use super::shm::ShmRegion;
use super::{ActivateError, ActivatedQueues, VirtioDevice, VirtioInterrupt, TYPE_FS};

/// The limits for each of `shares` shares in this process: the defaults, or
/// less if its RLIMIT_NOFILE cannot hold them all (logged, as is a limit so
/// low that even the smallest usable ones do not fit).
pub fn share_limits(shares: usize) -> FsLimits {
    // Without a share there is nothing to size (and nothing to log: every
    // VMM calls this, most have no share).
    if shares == 0 {
        return FsLimits::default();
    }
    let Some(nofile) = current_fd_limit() else { return FsLimits::default() };
    let limits = FsLimits::within(nofile, shares);
    if limits != FsLimits::default() {
        tracing::info!(
            "virtio-fs: RLIMIT_NOFILE {nofile} is below the {} that {shares} share(s) need for the default limits: \
             each holds at most {} inodes and {} open files",
            fd_budget(shares),
            limits.max_inodes,
            limits.max_handles
        );
    }
    if !limits.fit(nofile, shares) {
        tracing::warn!(
            "virtio-fs: RLIMIT_NOFILE {nofile} is too low for {shares} share(s): a guest can exhaust the VMM's \
             descriptors"
        );
    }
    limits
}

/// The high-priority queue's index.
pub const HIPRIO_QUEUE: usize = 0;
/// The request queue's index.
pub const REQUEST_QUEUE: usize = 1;
/// Both queues.
pub const NUM_QUEUES: usize = 2;
/// The largest size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// The configuration space: the tag, then num_request_queues.
const CONFIG_SPACE_SIZE: usize = FS_TAG_MAX + 4;

/// Chains taken per queue notification before the event loop gets a turn:
/// a guest streaming large writes (or junk) cannot starve the console, the
/// API or the other devices. The rest is served on the next turn.
const REQUESTS_PER_TURN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("fs {fs_id}: {reason}")]
    InvalidConfig { fs_id: String, reason: String },
    #[error("fs {fs_id}: shared_dir {path}: {source}")]
    SharedDir { fs_id: String, path: String, source: io::Error },
    #[error("fs {fs_id}: shared_dir {path} is not a directory")]
    NotADirectory { fs_id: String, path: String },
    #[error("fs {fs_id}: shared_dir {path} resolves to a path that is not UTF-8")]
    NotUtf8 { fs_id: String, path: String },
    #[error("fs {fs_id}: serving {path}: {source}")]
    Backend { fs_id: String, path: String, source: io::Error },
    #[error("fs {fs_id}: creating the activation eventfd: {source}")]
    EventFd { fs_id: String, source: io::Error },
    #[error("fs {fs_id}: reserving a {mib} MiB DAX window: {source}")]
    DaxWindow { fs_id: String, mib: u32, source: io::Error },
}

/// The device's counters.
#[derive(Debug, Default, serde::Serialize)]
pub struct FsMetrics {
    /// Descriptor chains taken from either queue.
    pub requests: AtomicU64,
    /// Requests the FUSE server could not handle (malformed or unsupported
    /// requests, answered with an errno), and queue failures (a corrupt
    /// available ring, unwritable used ring, failed interrupt). Ordinary
    /// FUSE errors (ENOENT, EACCES...) are answers, not errors.
    pub errors: AtomicU64,
    /// Chains that could not carry a request or take its answer: buffers
    /// outside guest memory, fewer bytes than a FUSE header, no room for a
    /// reply. Returned to the driver with nothing written.
    pub bad_chains: AtomicU64,
}

/// The FUSE server of one session and its file system.
struct Backend {
    /// Shared with the server, to empty it when a fresh one cannot be made.
    fs: Arc<ShareFs>,
    server: Server<Arc<ShareFs>>,
}

impl Backend {
    fn new(share: &ShareConfig) -> io::Result<Self> {
        let fs = Arc::new(ShareFs::new(share)?);
        Ok(Self { server: Server::new(fs.clone()), fs })
    }
}

/// A queue's notification eventfd, and whether the event loop watches it.
struct QueueEvent {
    fd: EventFd,
    registered: bool,
}

/// What the device has while the driver runs it.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    events: Vec<QueueEvent>,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-fs device. Shared between the virtio-mmio transport (as a
/// [`VirtioDevice`], on vCPU threads) and the event loop (as a
/// `MutEventSubscriber`), behind one mutex.
pub struct Fs {
    fs_id: String,
    tag: String,
    config_space: [u8; CONFIG_SPACE_SIZE],
    share: ShareConfig,
    backend: Backend,
    /// The DAX window, if the device has one; its mappings are the
    /// session's (emptied on reset).
    dax: Option<DaxWindow>,
    active: Option<Active>,
    /// Queue eventfds of a previous activation that the event loop still
    /// watches: kept open until it stops watching them, so their numbers
    /// cannot be reused (and registered again) in the meantime.
    retired: Vec<EventFd>,
    /// Written by `activate` and `reset` (vCPU threads) so the event loop
    /// brings its watch list in line with the device.
    wake: EventFd,
    metrics: Arc<FsMetrics>,
}

impl Fs {
    /// A device serving `config.shared_dir`, with the default
    /// [`FsLimits`].
    pub fn new(config: &FsConfig) -> Result<Fs, FsError> {
        Self::with_limits(config, FsLimits::default())
    }

    /// A device serving `config.shared_dir`, letting the guest hold at
    /// most `limits`. Checks the configuration (tag, shared directory) and
    /// opens the directory; errors name `fs_id` and the path.
    pub fn with_limits(config: &FsConfig, limits: FsLimits) -> Result<Fs, FsError> {
        let fs_id = || config.fs_id.clone();
        let path = || config.shared_dir.clone();
        config.validate().map_err(|reason| FsError::InvalidConfig { fs_id: fs_id(), reason })?;
        if config.tag.contains('\0') {
            return Err(FsError::InvalidConfig { fs_id: fs_id(), reason: "tag must not contain NUL bytes".into() });
        }
        // The canonical path: symlinks resolved now, once, so the share is
        // what the directory was at configuration.
        let unusable = |source| FsError::SharedDir { fs_id: fs_id(), path: path(), source };
        let shared_dir = std::fs::canonicalize(&config.shared_dir).map_err(unusable)?;
        let metadata = std::fs::metadata(&shared_dir).map_err(unusable)?;
        if !metadata.is_dir() {
            return Err(FsError::NotADirectory { fs_id: fs_id(), path: path() });
        }
        let root_dir =
            shared_dir.into_os_string().into_string().map_err(|_| FsError::NotUtf8 { fs_id: fs_id(), path: path() })?;

        let dax = config
            .dax_window_mib
            .map(|mib| {
                DaxWindow::new(u64::from(mib) << 20, config.read_only).map_err(|source| FsError::DaxWindow {
                    fs_id: fs_id(),
                    mib,
                    source,
                })
            })
            .transpose()?;
        let owners =
            Owners { allow_host_root: config.allow_host_root, root_uid: config.root_uid, root_gid: config.root_gid };
        let share = ShareConfig {
            root_dir,
            read_only: config.read_only,
            cache: config.cache,
            limits,
            dax: dax.is_some(),
            owners,
        };
        let root_dir = || share.root_dir.clone();
        let backend =
            Backend::new(&share).map_err(|source| FsError::Backend { fs_id: fs_id(), path: root_dir(), source })?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| FsError::EventFd { fs_id: fs_id(), source })?;

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        config_space[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());

        Ok(Fs {
            fs_id: config.fs_id.clone(),
            tag: config.tag.clone(),
            config_space,
            share,
            backend,
            dax,
            active: None,
            retired: Vec::new(),
            wake,
            metrics: Arc::new(FsMetrics::default()),
        })
    }

    pub fn fs_id(&self) -> &str {
        &self.fs_id
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The canonical path of the shared directory.
    pub fn shared_dir(&self) -> &str {
        &self.share.root_dir
    }

    pub fn read_only(&self) -> bool {
        self.share.read_only
    }

    /// The limits the guest is held to.
    pub fn limits(&self) -> FsLimits {
        self.share.limits
    }

    /// The DAX window's size in bytes, if the device has one.
    pub fn dax_window_size(&self) -> Option<u64> {
        self.dax.as_ref().map(|dax| dax.mapping().size())
    }

    /// The device's counters; they can be read without locking the device.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// Starts a new FUSE session: a fresh file system, so nothing the
    /// previous driver held stays open.
    fn new_session(&mut self) {
        match Backend::new(&self.share) {
            Ok(backend) => self.backend = backend,
            Err(err) => {
                // The shared directory went away or the VMM is out of
                // descriptors: keep the current file system, emptied of the
                // old session's inodes and handles (its own DESTROY).
                tracing::error!(
                    "fs {}: a fresh file system for the next session over {}: {err}; reusing the current one",
                    self.fs_id,
                    self.share.root_dir
                );
                self.backend.fs.destroy();
            }
        }
    }

    /// Brings the event loop's watch list in line with the device: stops
    /// watching retired queue eventfds (then closes them), and watches the
    /// active queues' eventfds.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for fd in std::mem::take(&mut self.retired) {
            if let Err(err) = ops.remove(Events::new(&fd, EventSet::IN)) {
                tracing::warn!("fs {}: unwatching a queue eventfd: {err:?}", self.fs_id);
            }
        }
        if let Some(active) = &mut self.active {
            for (index, event) in active.events.iter_mut().enumerate() {
                if event.registered {
                    continue;
                }
                match ops.add(Events::new(&event.fd, EventSet::IN)) {
                    Ok(()) => event.registered = true,
                    Err(err) => {
                        tracing::error!("fs {}: watching queue {index}'s notifications: {err:?}", self.fs_id)
                    }
                }
            }
        }
    }

    /// Serves the requests available in queue `index`, up to
    /// [`REQUESTS_PER_TURN`], and interrupts the guest once for the batch.
    fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else { return };
        let Some(queue) = active.queues.get_mut(index) else { return };
        let mem: &GuestMemoryMmap = &active.mem;
        let server = &self.backend.server;
        let metrics = &*self.metrics;
        let mut dax = self.dax.as_mut();
        // Chains taken (the turn's budget), and chains returned.
        let (mut taken, mut used) = (0usize, 0usize);

        'turn: loop {
            // No notifications while the queue is being emptied; enabled
            // again below, with a last look for requests that raced it.
            if let Err(err) = queue.disable_notification(mem) {
                request::count_error(metrics, &format_args!("queue {index}: disabling notifications: {err}"));
                break;
            }
            loop {
                let chain = match queue.iter(mem) {
                    Ok(mut chains) => chains.next(),
                    Err(err) => {
                        // The driver published an available index more
                        // than a queue's worth ahead: the ring cannot be
                        // trusted, so the queue stays stopped (the driver
                        // must reset the device).
                        request::count_error(metrics, &format_args!("queue {index}: {err}"));
                        break 'turn;
                    }
                };
                let Some(chain) = chain else { break };
                taken += 1;
                let head = chain.head_index();
                let cache_handler = dax.as_deref_mut().map(|window| window as &mut dyn FsCacheReqHandler);
                let len = request::handle_chain(server, mem, chain, cache_handler, metrics);
                match queue.add_used(mem, head, len) {
                    Ok(()) => used += 1,
                    Err(err) => {
                        request::count_error(metrics, &format_args!("queue {index}: returning chain {head}: {err}"))
                    }
                }
                if taken >= REQUESTS_PER_TURN {
                    // Come back on the event loop's next turn: the eventfd
                    // stays readable. Should that fail, the guest's next
                    // notification will do, so let it notify.
                    if let Err(err) = active.events[index].fd.write(1) {
                        request::count_error(metrics, &format_args!("queue {index}: rescheduling: {err}"));
                        let _ = queue.enable_notification(mem);
                    }
                    break 'turn;
                }
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(err) => {
                    request::count_error(metrics, &format_args!("queue {index}: enabling notifications: {err}"));
                    break;
                }
            }
        }

        if used > 0 && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(err) = active.interrupt.signal_used_queue() {
                request::count_error(metrics, &format_args!("queue {index}: interrupting the guest: {err}"));
            }
        }
    }

    /// How many queue eventfds the event loop watches, and how many retired
    /// ones it has yet to drop.
    #[cfg(test)]
    fn watched(&self) -> (usize, usize) {
        let active = self.active.as_ref().map_or(0, |a| a.events.iter().filter(|e| e.registered).count());
        (active, self.retired.len())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {
        // Nothing offered beyond VERSION_1, which the transport handles.
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else { return };
        let Some(available) = self.config_space.get(start..) else { return };
        let len = available.len().min(data.len());
        data[..len].copy_from_slice(&available[..len]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The configuration space is read-only for the driver.
        tracing::debug!("fs {}: ignored config write of {} bytes at {offset}", self.fs_id, data.len());
    }

    fn activate(&mut self, queues: ActivatedQueues) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivatedQueues { mem, queues, queue_events, interrupt } = queues;
        for got in [queues.len(), queue_events.len()] {
            if got != NUM_QUEUES {
                return Err(ActivateError::QueueCount { want: NUM_QUEUES, got });
            }
        }
        let events = queue_events.into_iter().map(|fd| QueueEvent { fd, registered: false }).collect();
        self.active = Some(Active { mem, queues, events, interrupt });
        if let Err(err) = self.wake.write(1) {
            // The event loop would never serve the queues.
            self.active = None;
            return Err(ActivateError::Backend(format!("fs {}: waking the event loop: {err}", self.fs_id)));
        }
        Ok(())
    }

    fn shm_region(&self) -> Option<ShmRegion> {
        self.dax.as_ref().map(|dax| ShmRegion { id: DAX_SHM_ID, mapping: dax.mapping().clone() })
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            // Eventfds never watched can close now; the others once the
            // event loop has stopped watching them.
            self.retired.extend(active.events.into_iter().filter(|e| e.registered).map(|e| e.fd));
        }
        self.new_session();
        if let Some(dax) = &self.dax {
            // Nothing the previous driver mapped stays visible to the next.
            if let Err(err) = dax.clear() {
                tracing::error!("fs {}: emptying the DAX window: {err}", self.fs_id);
            }
        }
        if !self.retired.is_empty() {
            if let Err(err) = self.wake.write(1) {
                // They are dropped at the next activation's wake-up instead.
                tracing::warn!("fs {}: waking the event loop after a reset: {err}", self.fs_id);
            }
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            tracing::error!("fs {}: watching the activation eventfd: {err:?}", self.fs_id);
        }
        // Activated before the device joined the event loop: the wake-up
        // is pending in the eventfd and arrives on the first turn.
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.wake.as_raw_fd() {
            // Nonblocking: EAGAIN when a previous turn already drained it.
            let _ = self.wake.read();
            self.sync_registrations(ops);
            return;
        }
        let queue = self
            .active
            .as_ref()
            .and_then(|active| active.events.iter().position(|e| e.registered && e.fd.as_raw_fd() == fd));
        match queue {
            Some(index) => {
                if let Some(active) = &self.active {
                    // Readable, so this does not block; the count is of no
                    // use (everything available is served).
                    let _ = active.events[index].fd.read();
                }
                self.process_queue(index);
            }
            // A retired queue's eventfd that fired before the wake-up was
            // handled: unwatch it now.
            None => self.sync_registrations(ops),
        }
    }
}
