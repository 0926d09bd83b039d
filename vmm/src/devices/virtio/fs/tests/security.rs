//! What a guest must not be able to do to the host: write to a read-only
//! share, reach outside the shared directory, hold unbounded host
//! resources.

use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::{AccessIn, FallocateIn, IoctlIn, Opcode, Rename2In, SetattrValid};
use fuse_backend_rs::abi::virtio_fs::{SetupmappingFlags, SetupmappingIn};

use super::*;

/// A share with a file (with an xattr), a directory with a file, and a
/// symlink.
fn populate(share: &Path) {
    std::fs::write(share.join("f"), b"original").unwrap();
    host_setxattr(&share.join("f"), "user.keep", b"1");
    std::fs::create_dir(share.join("d")).unwrap();
    std::fs::write(share.join("d/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("f", share.join("l")).unwrap();
}

#[test]
fn read_only_share_refuses_every_mutation() {
    let mut h = Harness::with_limits(true, FsLimits::default(), populate);
    let before = snapshot(h.base.as_path());
    h.init();
    let f = h.lookup(ROOT, "f").expect("lookup f");
    let d = h.lookup(ROOT, "d").expect("lookup d");
    let l = h.lookup(ROOT, "l").expect("lookup l");
    let erofs = Err(libc::EROFS);

    assert_eq!(h.create(ROOT, "new", libc::O_RDWR, 0o644).map(drop), erofs);
    assert_eq!(h.create(ROOT, "f", libc::O_RDONLY, 0o644).map(drop), erofs, "CREATE of an existing name");
    assert_eq!(h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0).map(drop), erofs);
    assert_eq!(h.mkdir(ROOT, "newdir", 0o755).map(drop), erofs);
    assert_eq!(h.unlink(ROOT, "f"), erofs);
    assert_eq!(h.unlink(ROOT, "l"), erofs);
    assert_eq!(h.rmdir(ROOT, "d"), erofs);
    assert_eq!(h.rename(ROOT, "f", d.nodeid, "g"), erofs);
    let rename2 = Rename2In { newdir: ROOT, flags: libc::RENAME_EXCHANGE, padding: 0 };
    let reply = h.call(Opcode::Rename2, ROOT, &[rename2.as_slice(), b"f\0", b"d\0"]);
    assert_eq!(reply.error, libc::EROFS);
    assert_eq!(h.link(f.nodeid, ROOT, "hard").map(drop), erofs);
    assert_eq!(h.symlink(ROOT, "s", "f").map(drop), erofs);

    for (what, args) in [
        ("chmod", SetattrIn { mode: 0o777, ..setattr_in(SetattrValid::MODE.bits()) }),
        ("chown", SetattrIn { uid: 1, gid: 1, ..setattr_in((SetattrValid::UID | SetattrValid::GID).bits()) }),
        ("truncate", SetattrIn { size: 0, ..setattr_in(SetattrValid::SIZE.bits()) }),
        ("utimens", setattr_in((SetattrValid::ATIME_NOW | SetattrValid::MTIME_NOW).bits())),
    ] {
        assert_eq!(h.setattr(f.nodeid, args).map(drop), erofs, "{what}");
    }

    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC, libc::O_WRONLY | libc::O_APPEND] {
        assert_eq!(h.open(f.nodeid, flags).map(drop), erofs, "open flags {flags:#o}");
    }
    assert_eq!(h.open(d.nodeid, libc::O_TMPFILE | libc::O_RDWR).map(drop), erofs, "O_TMPFILE");

    // Reading works, and a read-only handle refuses WRITE and FALLOCATE.
    let open = h.open(f.nodeid, libc::O_RDONLY).expect("read-only open");
    assert_eq!(h.read(f.nodeid, open.fh, 0, 100).expect("read"), b"original");
    assert_eq!(h.write(f.nodeid, open.fh, 0, b"changed").map(drop), erofs);
    let falloc = FallocateIn { fh: open.fh, offset: 0, length: 1 << 20, mode: 0, padding: 0 };
    assert_eq!(h.call(Opcode::Fallocate, f.nodeid, &[falloc.as_slice()]).error, libc::EROFS);
    let ioctl = IoctlIn { fh: open.fh, cmd: libc::FS_IOC_SETFLAGS as u32, ..Default::default() };
    assert_eq!(h.call(Opcode::Ioctl, f.nodeid, &[ioctl.as_slice()]).error, libc::EROFS);
    // Without a DAX window, SETUPMAPPING fails whatever the share.
    let mapping =
        SetupmappingIn { fh: open.fh, foffset: 0, len: 4096, flags: SetupmappingFlags::WRITE.bits(), moffset: 0 };
    assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[mapping.as_slice()]).error, libc::EINVAL);
    // COPY_FILE_RANGE is not implemented by the server at all.
    assert_eq!(h.call(Opcode::CopyFileRange, f.nodeid, &[&[0u8; 56]]).error, libc::ENOSYS);
    h.release(f.nodeid, open.fh).expect("release");

    assert_eq!(h.setxattr(f.nodeid, "user.new", b"x"), erofs);
    assert_eq!(h.removexattr(f.nodeid, "user.keep"), erofs);
    assert_eq!(h.getxattr(f.nodeid, "user.keep", 16).expect("getxattr"), b"1");
    assert_eq!(h.readlink(l.nodeid).expect("readlink"), b"f");

    let access = |mask: i32| AccessIn { mask: mask as u32, padding: 0 };
    assert_eq!(h.call(Opcode::Access, f.nodeid, &[access(libc::W_OK).as_slice()]).error, libc::EROFS);
    assert_eq!(h.call(Opcode::Access, f.nodeid, &[access(libc::R_OK).as_slice()]).error, 0);

    assert_eq!(snapshot(h.base.as_path()), before, "the host saw no change");
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 0), "refusals are answers, not errors");
}

/// `base/secret` next to `base/share`, and `share/sub`.
fn with_secret(share: &Path) {
    std::fs::write(share.parent().unwrap().join("secret"), b"host secret").unwrap();
    std::fs::create_dir(share.join("sub")).unwrap();
}

#[test]
fn dotdot_does_not_leave_the_share() {
    let mut h = Harness::with_limits(false, FsLimits::default(), with_secret);
    let before = snapshot(h.base.as_path());
    h.init();
    let share_ino = std::fs::metadata(&h.share).unwrap().ino();

    // ".." of the root is the root.
    let up = h.lookup(ROOT, "..").expect("lookup ..");
    assert_eq!(up.nodeid, ROOT);
    assert_eq!(up.attr.ino, share_ino);
    assert_eq!(h.lookup(up.nodeid, "secret").map(drop), Err(libc::ENOENT));
    let up_up = h.lookup(up.nodeid, "..").expect("lookup ../..");
    assert_eq!(up_up.nodeid, ROOT);

    // ".." of a subdirectory is the root, and no further.
    let sub = h.lookup(ROOT, "sub").expect("lookup sub");
    let parent = h.lookup(sub.nodeid, "..").expect("lookup sub/..");
    assert_eq!(parent.nodeid, ROOT);
    assert_eq!(h.lookup(parent.nodeid, "..").expect("sub/../..").nodeid, ROOT);
    assert_eq!(h.lookup(ROOT, ".").expect("lookup .").nodeid, ROOT);

    // Names are single components.
    for name in ["../secret", "sub/../../secret", "/etc/passwd", "sub/.."] {
        assert_eq!(h.lookup(ROOT, name).map(drop), Err(libc::EINVAL), "{name}");
    }
    // Nothing can be created or renamed as "..", "." or a path.
    for name in ["..", ".", "../planted", "sub/../../planted"] {
        assert_eq!(h.mkdir(ROOT, name, 0o755).map(drop), Err(libc::EINVAL), "mkdir {name}");
        assert_eq!(h.create(ROOT, name, libc::O_RDWR, 0o644).map(drop), Err(libc::EINVAL), "create {name}");
        assert_eq!(h.symlink(ROOT, name, "/").map(drop), Err(libc::EINVAL), "symlink {name}");
        assert_eq!(h.rename(ROOT, "sub", ROOT, name), Err(libc::EINVAL), "rename to {name}");
        assert_eq!(h.link(sub.nodeid, ROOT, name).map(drop), Err(libc::EINVAL), "link {name}");
    }
    assert_eq!(h.unlink(ROOT, "../secret"), Err(libc::EINVAL));
    assert_eq!(h.rmdir(ROOT, ".."), Err(libc::EINVAL));
    // FORGET of the root cannot drop it (which would let ".." find a new,
    // unconfined inode for the share's directory).
    h.forget(ROOT, u64::MAX);
    assert_eq!(h.lookup(sub.nodeid, "..").expect("lookup sub/.. after forget").nodeid, ROOT);

    assert_eq!(snapshot(h.base.as_path()), before);
}

#[test]
fn guest_symlinks_are_not_followed() {
    let mut h = Harness::with_limits(false, FsLimits::default(), with_secret);
    let base = h.base.as_path().to_str().unwrap().to_owned();
    let secret = h.base.as_path().join("secret");
    let before = snapshot(h.base.as_path());
    let secret_mtime = std::fs::metadata(&secret).unwrap().mtime();
    h.init();

    // Symlinks the guest makes are stored as they are...
    let to_base = h.symlink(ROOT, "abs", &base).expect("absolute symlink");
    let to_parent = h.symlink(ROOT, "rel", "..").expect("relative symlink");
    let to_secret = h.symlink(ROOT, "secretlink", &format!("{base}/secret")).expect("symlink to a file");
    assert_eq!(std::fs::read_link(h.host("abs")).unwrap().to_str(), Some(base.as_str()));

    // ...and never followed by the server: a symlink is not a directory to
    // look up, create or list in...
    for link in [&to_base, &to_parent] {
        assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(h.lookup(link.nodeid, "secret").is_err());
        assert!(h.lookup(link.nodeid, "share").is_err());
        assert!(h.create(link.nodeid, "planted", libc::O_RDWR, 0o644).is_err());
        assert!(h.mkdir(link.nodeid, "planted", 0o755).is_err());
        assert!(h.opendir(link.nodeid).is_err());
    }
    // ...nor a file to open...
    for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC] {
        assert!(h.open(to_secret.nodeid, flags).is_err(), "open flags {flags:#o}");
    }
    // ...and attribute changes on it reach the link, not its target.
    let chmod = SetattrIn { mode: 0o777, ..setattr_in(SetattrValid::MODE.bits()) };
    let _ = h.setattr(to_secret.nodeid, chmod);
    let truncate = SetattrIn { size: 0, ..setattr_in(SetattrValid::SIZE.bits()) };
    assert!(h.setattr(to_secret.nodeid, truncate).is_err());
    let times = SetattrIn { atime: 1, mtime: 1, ..setattr_in((SetattrValid::ATIME | SetattrValid::MTIME).bits()) };
    let _ = h.setattr(to_secret.nodeid, times);
    let _ = h.setxattr(to_secret.nodeid, "user.planted", b"x");
    assert_eq!(h.readlink(to_secret.nodeid).expect("readlink"), format!("{base}/secret").as_bytes());

    // Renaming, linking and removing act on the link itself.
    h.rename(ROOT, "secretlink", ROOT, "moved").expect("rename link");
    h.link(to_secret.nodeid, ROOT, "hardlink").expect("hard link to the link");
    assert!(std::fs::symlink_metadata(h.host("hardlink")).unwrap().file_type().is_symlink());
    h.unlink(ROOT, "moved").expect("unlink link");
    h.unlink(ROOT, "hardlink").expect("unlink link");
    h.unlink(ROOT, "abs").expect("unlink link");
    h.unlink(ROOT, "rel").expect("unlink link");

    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().mtime(), secret_mtime);
    assert_eq!(snapshot(h.base.as_path()), before, "nothing outside (or inside) the share changed");
}

#[test]
fn inode_and_handle_limits() {
    let limits = FsLimits { max_inodes: 3, max_handles: 2 };
    let mut h = Harness::with_limits(false, limits, |share| {
        for name in ["a", "b", "c", "d", "e"] {
            std::fs::write(share.join(name), name).unwrap();
        }
    });
    h.init();

    let a = h.lookup(ROOT, "a").expect("a");
    let b = h.lookup(ROOT, "b").expect("b");
    let c = h.lookup(ROOT, "c").expect("c");
    assert_eq!(h.lookup(ROOT, "d").map(drop), Err(libc::ENFILE));
    assert_eq!(h.lookup(ROOT, "a").expect("a again").nodeid, a.nodeid, "held inodes can be looked up again");
    assert_eq!(h.lookup(ROOT, "..").expect("the root").nodeid, ROOT, "the root is not counted");
    assert_eq!(h.held(), (3, 0));
    assert_eq!(h.create(ROOT, "new", libc::O_RDWR, 0o644).map(drop), Err(libc::ENFILE));
    assert_eq!(h.mkdir(ROOT, "newdir", 0o755).map(drop), Err(libc::ENFILE));
    assert_eq!(h.symlink(ROOT, "newlink", "a").map(drop), Err(libc::ENFILE));
    assert_eq!(h.host_listing(""), ["a", "b", "c", "d", "e"], "refused creations left no trace");

    // A listing at the limit returns only held entries, or ENFILE, and
    // takes no inode.
    let dir = h.opendir(ROOT).expect("opendir");
    let args = ReadIn { fh: dir.fh, offset: 0, size: 4096, ..Default::default() };
    let reply = h.call(Opcode::Readdirplus, ROOT, &[args.as_slice()]);
    assert!(reply.error == 0 || reply.error == libc::ENFILE, "{reply:?}");
    assert_eq!(h.held().0, 3);
    let release = ReleaseIn { fh: dir.fh, ..Default::default() };
    h.call(Opcode::Releasedir, ROOT, &[release.as_slice()]).ok().expect("releasedir");

    // FORGET makes room (all of c's lookups: the listing may have added
    // one).
    h.forget(c.nodeid, u64::MAX);
    let d = h.lookup(ROOT, "d").expect("d after a forget");
    assert_eq!(h.held(), (3, 0));

    // Handles.
    let fa = h.open(a.nodeid, libc::O_RDONLY).expect("open a");
    let _fb = h.open(b.nodeid, libc::O_RDONLY).expect("open b");
    assert_eq!(h.open(d.nodeid, libc::O_RDONLY).map(drop), Err(libc::EMFILE));
    assert_eq!(h.opendir(ROOT).map(drop), Err(libc::EMFILE));
    assert_eq!(h.held(), (3, 2));
    h.release(a.nodeid, fa.fh).expect("release");
    // A RELEASE of a handle that is not open frees nothing.
    assert_eq!(h.release(a.nodeid, fa.fh), Err(libc::EBADF));
    let fd = h.open(d.nodeid, libc::O_RDONLY).expect("open d after a release");
    assert_eq!(h.read(d.nodeid, fd.fh, 0, 10).expect("read d"), b"d");
    assert_eq!(h.held(), (3, 2));
}

#[test]
fn creations_carry_the_guests_ids() {
    // SAFETY: a getter without arguments or failure modes.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching to the guest's ids needs root");
        return;
    }
    let mut h = Harness::with_limits(false, FsLimits::default(), |share| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(share, std::fs::Permissions::from_mode(0o777)).unwrap();
    });
    h.init();
    h.creds = (1234, 5678);
    let (entry, open) = h.create(ROOT, "owned", libc::O_RDWR, 0o640).expect("create as 1234:5678");
    assert_eq!((entry.attr.uid, entry.attr.gid), (1234, 5678));
    h.mkdir(ROOT, "owned-dir", 0o750).expect("mkdir as 1234:5678");
    let meta = std::fs::metadata(h.host("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    let meta = std::fs::metadata(h.host("owned-dir")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    h.release(entry.nodeid, open.fh).unwrap();
    // The event-loop thread is back to root afterwards.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::geteuid() }, 0);
}
