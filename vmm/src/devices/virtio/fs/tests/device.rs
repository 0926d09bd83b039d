//! The device as the transport and the event loop see it: configuration,
//! config space, activation, the event loop's watch list, reset.

use std::sync::Mutex;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::super::{FsError, QUEUE_SIZE};
use super::*;
use crate::devices::virtio::{ActivateError, TYPE_FS};

#[test]
fn identity_and_config_space() {
    let (_base, share) = new_base();
    let fs = Fs::new(&fs_config(&share, false)).expect("device");
    assert_eq!(fs.device_type(), TYPE_FS);
    assert_eq!(fs.queue_max_sizes(), [QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(fs.device_features(), 0);
    assert_eq!((fs.fs_id(), fs.tag(), fs.read_only()), ("test", "testfs", false));

    let mut space = [0xffu8; 40];
    fs.read_config(0, &mut space);
    assert_eq!(&space[..6], b"testfs");
    assert!(space[6..36].iter().all(|&b| b == 0), "the tag is NUL-padded");
    assert_eq!(space[36..40], 1u32.to_le_bytes(), "one request queue");

    let mut word = [0xffu8; 4];
    fs.read_config(36, &mut word);
    assert_eq!(u32::from_le_bytes(word), 1);
    fs.read_config(2, &mut word);
    assert_eq!(&word, b"stfs");
    // Reads past the end are zeros, partly or wholly.
    let mut tail = [0xffu8; 8];
    fs.read_config(38, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
    for offset in [40, 4096, u64::MAX] {
        let mut past = [0xffu8; 4];
        fs.read_config(offset, &mut past);
        assert_eq!(past, [0; 4], "offset {offset}");
    }

    // Writes are ignored.
    let mut fs = fs;
    fs.write_config(0, b"evil");
    fs.read_config(0, &mut word);
    assert_eq!(&word, b"test");

    // A full-length tag fills the field with no NUL.
    let tag = "t".repeat(36);
    let fs = Fs::new(&FsConfig { tag: tag.clone(), ..fs_config(&share, false) }).expect("36-byte tag");
    fs.read_config(0, &mut space);
    assert_eq!(&space[..36], tag.as_bytes());
    assert_eq!(space[36..40], 1u32.to_le_bytes());
}

#[test]
fn bad_configurations() {
    let (base, share) = new_base();
    let file = base.as_path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();

    let missing = Fs::new(&fs_config(&base.as_path().join("missing"), false)).err().expect("missing dir");
    assert!(matches!(missing, FsError::SharedDir { .. }), "{missing}");
    assert!(missing.to_string().contains("missing"), "{missing}");

    let not_dir = Fs::new(&fs_config(&file, false)).err().expect("a file");
    assert!(matches!(not_dir, FsError::NotADirectory { .. }), "{not_dir}");

    for tag in ["x".repeat(37), String::new(), "a\0b".into()] {
        let err = Fs::new(&FsConfig { tag: tag.clone(), ..fs_config(&share, false) }).err().expect("bad tag");
        assert!(matches!(err, FsError::InvalidConfig { .. }), "{tag:?}: {err}");
        assert!(err.to_string().starts_with("fs test: "), "{err}");
    }

    // A symlink to a directory is served as the directory it names.
    let link = base.as_path().join("link");
    std::os::unix::fs::symlink(&share, &link).unwrap();
    let fs = Fs::new(&fs_config(&link, false)).expect("symlinked dir");
    assert_eq!(fs.shared_dir(), std::fs::canonicalize(&share).unwrap().to_str().unwrap());
}

#[test]
fn activation_contract() {
    let (base, share) = new_base();
    let fs = Fs::new(&fs_config(&share, false)).expect("device");
    let mut h = Harness::around(base, share, fs);

    let mut one_queue = h.activated_queues();
    one_queue.queues.truncate(1);
    assert!(matches!(h.dev().activate(one_queue), Err(ActivateError::QueueCount { want: 2, got: 1 })));
    let mut one_event = h.activated_queues();
    one_event.queue_events.truncate(1);
    assert!(matches!(h.dev().activate(one_event), Err(ActivateError::QueueCount { want: 2, got: 1 })));

    h.activate();
    let again = h.activated_queues();
    assert!(matches!(h.dev().activate(again), Err(ActivateError::AlreadyActive)));
}

/// The device on a real event loop, as the VMM runs it.
struct EventLoop {
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
}

impl EventLoop {
    fn new(h: &Harness) -> Self {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("event manager");
        manager.add_subscriber(h.fs.clone());
        Self { manager }
    }

    /// Runs the loop until nothing is ready.
    fn settle(&mut self) {
        while self.manager.run_with_timeout(0).expect("event loop") > 0 {}
    }
}

#[test]
fn served_from_the_event_loop_and_reset() {
    let (base, share) = new_base();
    std::fs::write(share.join("f"), b"contents").unwrap();
    let fs = Fs::new(&fs_config(&share, false)).expect("device");
    let mut h = Harness::around(base, share, fs);
    let mut event_loop = EventLoop::new(&h);
    event_loop.settle();
    assert_eq!(h.dev().watched(), (0, 0), "nothing to watch before activation");

    // Activation (on a vCPU thread in the VMM) wakes the loop, which
    // watches both queues.
    h.activate();
    assert_eq!(h.dev().watched(), (0, 0));
    event_loop.settle();
    assert_eq!(h.dev().watched(), (2, 0));

    // A request and the driver's notification: served by the loop, with an
    // interrupt.
    let flags = fuse_backend_rs::abi::fuse_abi::FsOptions::MAX_PAGES.bits() as u32;
    let init = InitIn { major: 7, minor: 33, max_readahead: 0, flags };
    let (len, _) = h.write_request(Opcode::Init as u32, 0, &[init.as_slice()]);
    h.push_chain(REQUEST_QUEUE, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
    h.kicks[REQUEST_QUEUE].write(1).unwrap();
    event_loop.settle();
    let used = h.collect_used(REQUEST_QUEUE);
    assert_eq!(h.read_reply(used[0].1).error, 0);
    assert_eq!(h.irq.read().unwrap(), 1);

    let f = h.lookup(ROOT, "f").expect("lookup");
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("open");
    assert_eq!(h.held(), (1, 1));

    // Reset: the queues go, the loop stops watching their eventfds, the
    // session's inodes and handles are closed.
    let old_kicks = std::mem::take(&mut h.kicks);
    h.dev().reset();
    assert_eq!(h.dev().watched(), (0, 2), "retired until the loop drops them");
    assert_eq!(h.held(), (0, 0));
    event_loop.settle();
    assert_eq!(h.dev().watched(), (0, 0));
    // A late notification on an old eventfd reaches nobody (and trips no
    // event-manager assertion).
    old_kicks[REQUEST_QUEUE].write(1).unwrap();
    event_loop.settle();

    // The driver sets the device up again: a new session, in which the old
    // node ids and handles mean nothing.
    h.activate();
    event_loop.settle();
    assert_eq!(h.dev().watched(), (2, 0));
    h.init();
    assert_eq!(h.read(f.nodeid, open.fh, 0, 10), Err(libc::EBADF));
    let f = h.lookup(ROOT, "f").expect("lookup in the new session");
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("open");
    assert_eq!(h.read(f.nodeid, open.fh, 0, 100).expect("read"), b"contents");

    h.dev().reset();
    event_loop.settle();
    assert_eq!(h.dev().watched(), (0, 0));
    // Activated and reset before the loop had a turn: nothing was watched,
    // so nothing is retired.
    h.activate();
    h.dev().reset();
    assert_eq!(h.dev().watched(), (0, 0));
    event_loop.settle();
    assert_eq!(h.dev().watched(), (0, 0));
}

#[test]
fn activated_before_joining_the_event_loop() {
    let (base, share) = new_base();
    let fs = Fs::new(&fs_config(&share, false)).expect("device");
    let mut h = Harness::around(base, share, fs);
    h.activate();
    // The pending wake-up is seen once the device is added.
    let mut event_loop = EventLoop::new(&h);
    event_loop.settle();
    assert_eq!(h.dev().watched(), (2, 0));
}

#[test]
fn hiprio_queue_serves_forgets() {
    let mut h = Harness::new(false);
    h.init();
    std::fs::write(h.host("f"), b"x").unwrap();
    let f = h.lookup(ROOT, "f").expect("lookup");
    assert_eq!(h.held(), (1, 0));
    // FORGET with a (needless) reply buffer: still no reply.
    let (len, _) = h.write_request(Opcode::Forget as u32, f.nodeid, &[&1u64.to_le_bytes()]);
    h.push_chain(HIPRIO_QUEUE, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
    assert_eq!(h.run(HIPRIO_QUEUE), [(0, 0)]);
    assert_eq!(h.held(), (0, 0));
    // BATCH_FORGET.
    let f = h.lookup(ROOT, "f").expect("lookup");
    let g = {
        std::fs::write(h.host("g"), b"y").unwrap();
        h.lookup(ROOT, "g").expect("lookup")
    };
    let batch = fuse_backend_rs::abi::fuse_abi::BatchForgetIn { count: 2, dummy: 0 };
    let one = |nodeid: u64| fuse_backend_rs::abi::fuse_abi::ForgetOne { nodeid, nlookup: 1 };
    let (len, _) = h.write_request(
        Opcode::BatchForget as u32,
        0,
        &[batch.as_slice(), one(f.nodeid).as_slice(), one(g.nodeid).as_slice()],
    );
    h.push_chain(HIPRIO_QUEUE, &[Desc::readable(IN_BUF, len)]);
    assert_eq!(h.run(HIPRIO_QUEUE), [(0, 0)]);
    assert_eq!(h.held(), (0, 0));
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 0));
}

/// A device with a DAX window, serving `file` (2 pages of a pattern).
fn dax_harness(read_only: bool) -> (Harness, Vec<u8>) {
    let (base, share) = new_base();
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(share.join("file"), &data).expect("file");
    let config = FsConfig { dax_window_mib: Some(2), ..fs_config(&share, read_only) };
    let fs = Fs::new(&config).expect("device with a DAX window");
    let mut h = Harness::around(base, share, fs);
    h.activate();
    (h, data)
}

fn window_bytes(h: &Harness, offset: u64, len: usize) -> Vec<u8> {
    let region = h.dev().shm_region().expect("a DAX window");
    let host = (region.mapping.host_addr() + offset) as *const u8;
    // SAFETY: callers read only what a SETUPMAPPING just mapped from a file
    // at least that long; `region` keeps the window alive for the copy.
    unsafe { std::slice::from_raw_parts(host, len) }.to_vec()
}

#[test]
fn without_a_dax_window_there_is_no_shared_memory_region() {
    let (_base, share) = new_base();
    let fs = Fs::new(&fs_config(&share, false)).expect("device");
    assert!(fs.shm_region().is_none());
    assert_eq!(fs.dax_window_size(), None);
    let bad = FsConfig { dax_window_mib: Some(3), ..fs_config(&share, false) };
    assert!(matches!(Fs::new(&bad), Err(FsError::InvalidConfig { .. })));
}

#[test]
fn setupmapping_maps_files_into_the_dax_window_within_its_bounds() {
    use fuse_backend_rs::abi::virtio_fs::{RemovemappingIn, RemovemappingOne, SetupmappingFlags, SetupmappingIn};

    let (mut h, data) = dax_harness(false);
    let region = h.dev().shm_region().expect("a DAX window");
    assert_eq!((region.id, region.mapping.size()), (0, 2 << 20));
    let f = h.lookup(ROOT, "file").expect("lookup");
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("open");
    let setup = |moffset: u64, len: u64, flags: SetupmappingFlags| SetupmappingIn {
        fh: open.fh,
        foffset: 0,
        len,
        flags: flags.bits(),
        moffset,
    };
    let mapping = setup(4096, 8192, SetupmappingFlags::READ);
    assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, 0);
    assert_eq!(window_bytes(&h, 4096, 8192), data);
    // Outside the window, or overflowing: refused, nothing mapped.
    for (moffset, len) in [(2 << 20, 4096), ((2 << 20) - 4096, 8192), (u64::MAX - 4095, 8192)] {
        let mapping = setup(moffset, len, SetupmappingFlags::READ);
        assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, libc::EINVAL);
    }
    let remove = RemovemappingIn { count: 1 };
    let one = RemovemappingOne { moffset: 4096, len: 8192 };
    assert_eq!(h.call(Opcode::RemoveMapping, f.nodeid, &[remove.as_slice(), one.as_slice()]).error, 0);
    let outside = RemovemappingOne { moffset: 2 << 20, len: 4096 };
    assert_eq!(h.call(Opcode::RemoveMapping, f.nodeid, &[remove.as_slice(), outside.as_slice()]).error, libc::EINVAL);

    // A reset empties the window.
    let mapping = setup(0, 4096, SetupmappingFlags::READ);
    assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, 0);
    h.dev().reset();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let start = format!("{:x}-", region.mapping.host_addr());
    let line = maps.lines().find(|l| l.starts_with(&start)).expect("the window's first page");
    assert!(line.split_whitespace().nth(1).expect("perms").starts_with("---p"), "{line}");
}

#[test]
fn a_read_only_dax_share_refuses_writable_mappings() {
    use fuse_backend_rs::abi::virtio_fs::{SetupmappingFlags, SetupmappingIn};

    let (mut h, data) = dax_harness(true);
    let f = h.lookup(ROOT, "file").expect("lookup");
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("open");
    let writable = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
    let mapping = SetupmappingIn { fh: open.fh, foffset: 0, len: 4096, flags: writable.bits(), moffset: 0 };
    assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, libc::EROFS);
    let mapping = SetupmappingIn { flags: SetupmappingFlags::READ.bits(), ..mapping };
    assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, 0);
    assert_eq!(window_bytes(&h, 0, 4096), data[..4096]);
}
