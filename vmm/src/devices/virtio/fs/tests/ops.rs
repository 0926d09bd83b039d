//! File operations from the guest, seen on the host.

use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::{FsOptions, Opcode, ReadIn, SetattrValid};

use super::*;

#[test]
fn init_negotiates_large_requests() {
    let mut h = Harness::new(false);
    let init = h.init();
    assert_eq!((init.major, init.minor), (7, 33));
    let flags = FsOptions::from_bits_truncate(u64::from(init.flags));
    assert!(flags.contains(FsOptions::MAX_PAGES | FsOptions::BIG_WRITES | FsOptions::DO_READDIRPLUS), "{flags:?}");
    assert_eq!(init.max_write, 1 << 20);
    assert!(!flags.contains(FsOptions::WRITEBACK_CACHE));
}

#[test]
fn file_round_trip() {
    let mut h = Harness::new(false);
    h.init();
    let root = h.getattr(ROOT).expect("root attributes");
    assert_eq!(root.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(root.attr.ino, std::fs::metadata(&h.share).unwrap().ino());

    // CREATE, WRITE, READ back, RELEASE.
    let (entry, open) = h.create(ROOT, "hello.txt", libc::O_RDWR, 0o644).expect("create");
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(h.write(entry.nodeid, open.fh, 0, b"hello, host").expect("write"), 11);
    assert_eq!(h.write(entry.nodeid, open.fh, 7, b"guest").expect("write"), 5);
    assert_eq!(h.read(entry.nodeid, open.fh, 0, 4096).expect("read"), b"hello, guest");
    assert_eq!(h.read(entry.nodeid, open.fh, 7, 3).expect("read"), b"gue");
    h.release(entry.nodeid, open.fh).expect("release");
    assert_eq!(std::fs::read(h.host("hello.txt")).unwrap(), b"hello, guest");
    assert_eq!(mode_of(&h.host("hello.txt")), 0o644);
    // The handle is gone.
    assert_eq!(h.read(entry.nodeid, open.fh, 0, 10), Err(libc::EBADF));

    // A file made on the host: LOOKUP, OPEN read-only, READ.
    std::fs::write(h.host("from-host"), b"made on the host").unwrap();
    let host_file = h.lookup(ROOT, "from-host").expect("lookup");
    assert_eq!(host_file.attr.size, 16);
    let open = h.open(host_file.nodeid, libc::O_RDONLY).expect("open");
    assert_eq!(h.read(host_file.nodeid, open.fh, 5, 100).expect("read"), b"on the host");
    h.release(host_file.nodeid, open.fh).unwrap();
    assert_eq!(h.lookup(ROOT, "missing").map(drop), Err(libc::ENOENT));

    // MKDIR, RENAME into it, the host sees the move.
    let dir = h.mkdir(ROOT, "dir", 0o750).expect("mkdir");
    assert_eq!(mode_of(&h.host("dir")), 0o750);
    h.rename(ROOT, "hello.txt", dir.nodeid, "moved.txt").expect("rename");
    assert!(!h.host("hello.txt").exists());
    assert_eq!(std::fs::read(h.host("dir/moved.txt")).unwrap(), b"hello, guest");
    let moved = h.lookup(dir.nodeid, "moved.txt").expect("lookup moved");
    assert_eq!(moved.nodeid, entry.nodeid, "the same inode keeps its node id");

    // SYMLINK and READLINK.
    let link = h.symlink(ROOT, "link", "dir/moved.txt").expect("symlink");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(std::fs::read_link(h.host("link")).unwrap().to_str(), Some("dir/moved.txt"));
    assert_eq!(h.readlink(link.nodeid).expect("readlink"), b"dir/moved.txt");

    // LINK: a second name for the same inode.
    let hard = h.link(moved.nodeid, ROOT, "hard").expect("link");
    assert_eq!(hard.nodeid, moved.nodeid);
    assert_eq!(std::fs::metadata(h.host("hard")).unwrap().nlink(), 2);

    // SETATTR: chmod, truncate, times.
    let chmod = SetattrIn { mode: 0o600, ..setattr_in(SetattrValid::MODE.bits()) };
    let attr = h.setattr(moved.nodeid, chmod).expect("chmod");
    assert_eq!(attr.attr.mode & 0o7777, 0o600);
    assert_eq!(mode_of(&h.host("dir/moved.txt")), 0o600);
    let truncate = SetattrIn { size: 5, ..setattr_in(SetattrValid::SIZE.bits()) };
    assert_eq!(h.setattr(moved.nodeid, truncate).expect("truncate").attr.size, 5);
    assert_eq!(std::fs::read(h.host("dir/moved.txt")).unwrap(), b"hello");
    let times = SetattrIn { mtime: 1_000_000, ..setattr_in((SetattrValid::MTIME).bits()) };
    h.setattr(moved.nodeid, times).expect("utimens");
    assert_eq!(std::fs::metadata(h.host("dir/moved.txt")).unwrap().mtime(), 1_000_000);

    // SETXATTR, GETXATTR (size query, then value), REMOVEXATTR.
    h.setxattr(moved.nodeid, "user.husk", b"value").expect("setxattr");
    let size = h.getxattr(moved.nodeid, "user.husk", 0).expect("getxattr size");
    assert_eq!(size[..4], 5u32.to_le_bytes());
    assert_eq!(h.getxattr(moved.nodeid, "user.husk", 64).expect("getxattr"), b"value");
    assert_eq!(xattr_names(&h.host("dir/moved.txt")), b"user.husk\0");
    h.removexattr(moved.nodeid, "user.husk").expect("removexattr");
    assert_eq!(h.getxattr(moved.nodeid, "user.husk", 64), Err(libc::ENODATA));
    // A huge buffer size is clamped rather than allocated.
    h.setxattr(moved.nodeid, "user.big", b"x").expect("setxattr");
    assert_eq!(h.getxattr(moved.nodeid, "user.big", u32::MAX).expect("getxattr"), b"x");
    // Host-privileged namespaces stay out of the guest's reach.
    assert_eq!(h.setxattr(moved.nodeid, "trusted.overlay.opaque", b"y"), Err(libc::EPERM));
    assert_eq!(h.setxattr(moved.nodeid, "security.selinux", b"y"), Err(libc::EPERM));
    assert_eq!(h.removexattr(moved.nodeid, "trusted.x"), Err(libc::EPERM));

    // UNLINK, RMDIR: the share ends empty.
    h.unlink(ROOT, "link").expect("unlink link");
    h.unlink(ROOT, "hard").expect("unlink hard");
    h.unlink(dir.nodeid, "moved.txt").expect("unlink file");
    h.unlink(ROOT, "from-host").expect("unlink host file");
    assert_eq!(h.rmdir(ROOT, "missing"), Err(libc::ENOENT));
    h.rmdir(ROOT, "dir").expect("rmdir");
    assert!(h.host_listing("").is_empty(), "{:?}", h.host_listing(""));

    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 0));
}

#[test]
fn directory_listing() {
    let mut h = Harness::with_limits(false, FsLimits::default(), |share| {
        for name in ["a", "b", "c"] {
            std::fs::write(share.join(name), name).unwrap();
        }
        std::fs::create_dir(share.join("sub")).unwrap();
    });
    h.init();
    let dir = h.opendir(ROOT).expect("opendir");
    let args = ReadIn { fh: dir.fh, offset: 0, size: 4096, ..Default::default() };
    let body = h.call(Opcode::Readdirplus, ROOT, &[args.as_slice()]).ok().expect("readdirplus");
    // Each entry: EntryOut, Dirent (ino, off, namelen, type), name padded
    // to 8 bytes.
    let mut names = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        let entry_len = size_of::<fuse_backend_rs::abi::fuse_abi::EntryOut>();
        let namelen = u32::from_le_bytes(rest[entry_len + 16..entry_len + 20].try_into().unwrap()) as usize;
        let name_start = entry_len + 24;
        names.push(String::from_utf8(rest[name_start..name_start + namelen].to_vec()).unwrap());
        rest = &rest[(name_start + namelen).next_multiple_of(8)..];
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c", "sub"]);
    // Every listed entry is now held by the guest.
    assert_eq!(h.held(), (4, 1));
    let release = ReleaseIn { fh: dir.fh, ..Default::default() };
    h.call(Opcode::Releasedir, ROOT, &[release.as_slice()]).ok().expect("releasedir");
    assert_eq!(h.held(), (4, 0));
}

#[test]
fn large_write_and_read() {
    let mut h = Harness::new(false);
    h.init();
    let (entry, open) = h.create(ROOT, "big", libc::O_RDWR, 0o600).expect("create");
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(h.write(entry.nodeid, open.fh, 0, &data).expect("1 MiB write"), 1 << 20);
    assert_eq!(h.read(entry.nodeid, open.fh, 0, 1 << 20).expect("1 MiB read"), data);
    assert_eq!(std::fs::read(h.host("big")).unwrap(), data);
}

#[test]
fn mknod_makes_fifos_but_not_devices() {
    let mut h = Harness::new(false);
    h.init();
    h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0).expect("fifo");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::symlink_metadata(h.host("fifo")).unwrap().file_type()));
    // The server never opens it (that would block the event loop).
    let fifo = h.lookup(ROOT, "fifo").expect("lookup fifo");
    assert!(h.open(fifo.nodeid, libc::O_RDONLY).is_err());
    // /dev/null's numbers, as a character and a block device.
    let null = libc::makedev(1, 3) as u32;
    assert_eq!(h.mknod(ROOT, "null", libc::S_IFCHR | 0o666, null).map(drop), Err(libc::EPERM));
    assert_eq!(h.mknod(ROOT, "blk", libc::S_IFBLK | 0o666, null).map(drop), Err(libc::EPERM));
    assert_eq!(h.host_listing(""), ["fifo"]);
}

#[test]
fn forget_and_destroy_end_the_session_state() {
    let mut h = Harness::new(false);
    h.init();
    std::fs::write(h.host("f"), b"x").unwrap();
    let f = h.lookup(ROOT, "f").expect("lookup");
    let again = h.lookup(ROOT, "f").expect("lookup again");
    assert_eq!(f.nodeid, again.nodeid);
    assert_eq!(h.held(), (1, 0));
    h.forget(f.nodeid, 1);
    assert_eq!(h.held(), (1, 0), "one lookup still held");
    h.forget(f.nodeid, 1);
    assert_eq!(h.held(), (0, 0));
    assert_eq!(h.getattr(f.nodeid).map(drop), Err(libc::EBADF), "a forgotten node id is gone");

    // DESTROY (unmount) drops everything; the next INIT starts afresh.
    let f = h.lookup(ROOT, "f").expect("lookup");
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("open");
    assert_eq!(h.held(), (1, 1));
    assert_eq!(h.call(Opcode::Destroy, 0, &[]).error, 0);
    assert_eq!(h.held(), (0, 0));
    assert_eq!(h.read(f.nodeid, open.fh, 0, 1), Err(libc::EBADF));
    h.init();
    assert_eq!(h.getattr(ROOT).expect("root after re-INIT").attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(h.lookup(ROOT, "f").is_ok());
}

#[test]
fn cache_policies() {
    for (cache, timeout) in [(FsCachePolicy::Never, 0), (FsCachePolicy::Auto, 1), (FsCachePolicy::Always, 86_400)] {
        let (base, share) = new_base();
        std::fs::write(share.join("f"), b"x").unwrap();
        let fs = Fs::new(&FsConfig { cache, ..fs_config(&share, false) }).expect("device");
        let mut h = Harness::around(base, share, fs);
        h.activate();
        h.init();
        let entry = h.lookup(ROOT, "f").expect("lookup");
        assert_eq!((entry.entry_valid, entry.attr_valid), (timeout, timeout), "{cache:?}");
        let open = h.open(entry.nodeid, libc::O_RDONLY).expect("open");
        // FOPEN_DIRECT_IO with `never`, FOPEN_KEEP_CACHE with `always`.
        let expected = match cache {
            FsCachePolicy::Never => 1,
            FsCachePolicy::Auto => 0,
            FsCachePolicy::Always => 2,
        };
        assert_eq!(open.open_flags, expected, "{cache:?}");
    }
}

#[test]
fn the_process_umask_is_kept() {
    // A mask no other test sets, under the module's umask lock, so no
    // device call elsewhere is half-way through changing it.
    let set = |mask: libc::mode_t| {
        let _serial = super::super::share::UMASK_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: umask only swaps the process's creation mask.
        unsafe { libc::umask(mask) }
    };
    let original = set(0o022);

    let mut h = Harness::new(false);
    h.init();
    let (entry, open) = h.create(ROOT, "f", libc::O_RDWR, 0o664).expect("create");
    h.release(entry.nodeid, open.fh).unwrap();
    h.mkdir(ROOT, "d", 0o775).expect("mkdir");
    h.mknod(ROOT, "p", libc::S_IFIFO | 0o662, 0).expect("mknod");
    assert_eq!(h.call(Opcode::Destroy, 0, &[]).error, 0);
    h.init();
    h.dev().reset();

    // The guest's modes are kept exactly (PassthroughFs ran with umask 0)...
    assert_eq!((mode_of(&h.host("f")), mode_of(&h.host("d")), mode_of(&h.host("p"))), (0o664, 0o775, 0o662));
    // ...and the rest of the process still has its own mask.
    assert_eq!(set(original), 0o022);
}
