//! What the guest's root must not leave in a share: files owned by host
//! root (unless the share allows it), setuid and setgid files, file
//! capabilities, device nodes; and what writes must take away. Checked on
//! the host after each request. Most tests need the test process to be
//! root, as the VMM is: otherwise nothing it creates is root's anyway.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{FallocateIn, Opcode, SetattrValid, WRITE_KILL_PRIV};
use fuse_backend_rs::abi::virtio_fs::{SetupmappingFlags, SetupmappingIn};

use super::*;

fn is_root() -> bool {
    // SAFETY: a getter without arguments or failure modes.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the guest's ids only become host root when the VMM is root");
    }
    root
}

/// A vfs_cap_data (revision 2) granting CAP_NET_BIND_SERVICE, effective.
const CAPABILITY: [u8; 20] = {
    let mut value = [0u8; 20];
    let magic = 0x0200_0001u32.to_le_bytes();
    let permitted = (1u32 << 10).to_le_bytes();
    let mut i = 0;
    while i < 4 {
        value[i] = magic[i];
        value[4 + i] = permitted[i];
        i += 1;
    }
    value
};

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).expect("metadata");
    (meta.uid(), meta.gid())
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn has_capability(path: &Path) -> bool {
    xattr_names(path).split(|&b| b == 0).any(|name| name == b"security.capability")
}

/// The share: a root-owned 0755 directory (as an image's /usr is), a
/// root-owned setgid directory writable by all, and a root-owned file.
fn image_like(share: &Path) {
    std::fs::create_dir(share.join("usr")).unwrap();
    std::fs::create_dir(share.join("shared")).unwrap();
    chmod(&share.join("shared"), 0o2777);
    std::fs::write(share.join("root-file"), b"root's").unwrap();
    chmod(&share.join("root-file"), 0o644);
}

fn squashed(config: &mut FsConfig) {
    assert!(!config.allow_host_root, "squashing is the default");
}

fn host_root(config: &mut FsConfig) {
    config.allow_host_root = true;
}

#[test]
fn the_guests_root_is_squashed_on_what_it_creates() {
    if !is_root() {
        return;
    }
    let mut h = Harness::with_config(squashed, FsLimits::default(), image_like);
    h.init();
    h.creds = (0, 0);
    let nobody = (65534, 65534);
    let usr = h.lookup(ROOT, "usr").expect("usr");

    // Permission checks stay the guest root's: it writes into root's 0755
    // directory, and what it makes there is nobody's on the host, and in
    // the guest (no reverse mapping).
    let (entry, open) = h.create(usr.nodeid, "tool", libc::O_RDWR, libc::S_IFREG | 0o755).expect("create");
    assert_eq!((entry.attr.uid, entry.attr.gid), nobody);
    assert_eq!(owner(&h.host("usr/tool")), nobody);
    assert_eq!(h.getattr(entry.nodeid).expect("getattr").attr.uid, 65534);
    h.release(entry.nodeid, open.fh).expect("release");
    let dir = h.mkdir(usr.nodeid, "lib", libc::S_IFDIR | 0o755).expect("mkdir");
    assert_eq!((dir.attr.uid, dir.attr.gid), nobody);
    assert_eq!(owner(&h.host("usr/lib")), nobody);
    let fifo = h.mknod(usr.nodeid, "fifo", libc::S_IFIFO | 0o644, 0).expect("mkfifo");
    assert_eq!((fifo.attr.uid, fifo.attr.gid), nobody);
    assert_eq!(owner(&h.host("usr/fifo")), nobody);
    let link = h.symlink(usr.nodeid, "link", "tool").expect("symlink");
    assert_eq!((link.attr.uid, link.attr.gid), nobody);
    assert_eq!(owner(&h.host("usr/link")), nobody);

    // chown and chgrp to 0 are to nobody; other ids pass through.
    let ids = |uid: u32, gid: u32| SetattrIn { uid, gid, ..setattr_in((SetattrValid::UID | SetattrValid::GID).bits()) };
    let attr = h.setattr(entry.nodeid, ids(0, 0)).expect("chown 0:0");
    assert_eq!((attr.attr.uid, attr.attr.gid), nobody);
    assert_eq!(owner(&h.host("usr/tool")), nobody);
    h.setattr(entry.nodeid, ids(1000, 0)).expect("chown 1000:0");
    assert_eq!(owner(&h.host("usr/tool")), (1000, 65534));
    h.setattr(entry.nodeid, ids(0, 1000)).expect("chown 0:1000");
    assert_eq!(owner(&h.host("usr/tool")), (65534, 1000));
    let chgrp = SetattrIn { gid: 0, ..setattr_in(SetattrValid::GID.bits()) };
    h.setattr(entry.nodeid, chgrp).expect("chgrp 0");
    assert_eq!(owner(&h.host("usr/tool")), nobody);
    h.setattr(entry.nodeid, ids(5, 6)).expect("chown 5:6");
    assert_eq!(owner(&h.host("usr/tool")), (5, 6));
    h.setattr(link.nodeid, ids(0, 0)).expect("chown of the symlink");
    assert_eq!(owner(&h.host("usr/link")), nobody);

    // A guest user's gid 0 inherited from a setgid directory of group 0
    // is squashed too; its uid stays.
    let shared = h.lookup(ROOT, "shared").expect("shared");
    h.creds = (1000, 1000);
    let (entry, open) = h.create(shared.nodeid, "mine", libc::O_RDWR, libc::S_IFREG | 0o644).expect("create");
    assert_eq!((entry.attr.uid, entry.attr.gid), (1000, 65534));
    assert_eq!(owner(&h.host("shared/mine")), (1000, 65534));
    h.release(entry.nodeid, open.fh).expect("release");
    let sub = h.mkdir(shared.nodeid, "sub", libc::S_IFDIR | 0o755).expect("mkdir");
    assert_eq!((sub.attr.uid, sub.attr.gid), (1000, 65534));
    assert_eq!(mode_of(&h.host("shared/sub")), 0o2755, "a new directory inherits setgid");
    h.creds = (0, 0);

    // CREATE of an existing root-owned file opens it and leaves it root's.
    let (existing, open) = h.create(ROOT, "root-file", libc::O_RDWR, 0o600).expect("create of an existing file");
    assert_eq!((existing.attr.uid, existing.attr.gid), (0, 0));
    assert_eq!(owner(&h.host("root-file")), (0, 0));
    assert_eq!(mode_of(&h.host("root-file")), 0o644);
    assert_eq!(h.read(existing.nodeid, open.fh, 0, 64).expect("read"), b"root's");
    h.release(existing.nodeid, open.fh).expect("release");
    assert_eq!(h.create(ROOT, "root-file", libc::O_RDWR | libc::O_EXCL, 0o600).map(drop), Err(libc::EEXIST));

    // No unnamed files owned by whoever the VMM is.
    assert_eq!(h.open(usr.nodeid, libc::O_TMPFILE | libc::O_RDWR).map(drop), Err(libc::EOPNOTSUPP));
    assert_eq!(h.create(usr.nodeid, "t", libc::O_TMPFILE | libc::O_RDWR, 0o600).map(drop), Err(libc::EINVAL));

    // Nothing in the share is root's but what the host put there.
    let mut stack = vec![h.share.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let host_made = [h.share.clone(), h.host("usr"), h.host("shared"), h.host("root-file")];
        if !host_made.contains(&path) {
            assert!(meta.uid() != 0 && meta.gid() != 0, "{} is root's", path.display());
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
}

#[test]
fn a_share_allowing_host_root_keeps_the_guests_ids() {
    if !is_root() {
        return;
    }
    let mut h = Harness::with_config(host_root, FsLimits::default(), image_like);
    h.init();
    h.creds = (0, 0);
    let (entry, open) = h.create(ROOT, "f", libc::O_RDWR, libc::S_IFREG | 0o755).expect("create");
    assert_eq!((entry.attr.uid, entry.attr.gid), (0, 0));
    assert_eq!(owner(&h.host("f")), (0, 0));
    h.release(entry.nodeid, open.fh).expect("release");
    h.mkdir(ROOT, "d", libc::S_IFDIR | 0o755).expect("mkdir");
    assert_eq!(owner(&h.host("d")), (0, 0));
    h.symlink(ROOT, "l", "f").expect("symlink");
    assert_eq!(owner(&h.host("l")), (0, 0));
    let chown = SetattrIn { uid: 0, gid: 0, ..setattr_in((SetattrValid::UID | SetattrValid::GID).bits()) };
    let mine = h.lookup(ROOT, "root-file").expect("lookup");
    h.setattr(mine.nodeid, SetattrIn { uid: 7, gid: 7, ..chown }).expect("chown 7:7");
    h.setattr(mine.nodeid, chown).expect("chown 0:0");
    assert_eq!(owner(&h.host("root-file")), (0, 0));
    // File capabilities are the guest's to set here.
    h.setxattr(entry.nodeid, "security.capability", &CAPABILITY).expect("setcap");
    assert!(has_capability(&h.host("f")));
}

/// Both settings: what no share lets the guest's root do.
#[test]
fn no_setuid_files_device_nodes_or_capabilities_whatever_the_share() {
    if !is_root() {
        return;
    }
    for allow_host_root in [false, true] {
        let mut h = Harness::with_config(|c| c.allow_host_root = allow_host_root, FsLimits::default(), image_like);
        h.init();
        h.creds = (0, 0);
        let what = format!("allow_host_root {allow_host_root}");

        // Modes asked at creation lose setuid, and setgid but on directories.
        for (name, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6777)] {
            let (entry, open) = h.create(ROOT, name, libc::O_RDWR, libc::S_IFREG | mode).expect("create");
            assert_eq!(entry.attr.mode & 0o7000, 0, "{what}: {name}");
            assert_eq!(mode_of(&h.host(name)), mode & 0o777, "{what}: {name}");
            h.release(entry.nodeid, open.fh).expect("release");
        }
        let node = h.mknod(ROOT, "node", libc::S_IFREG | 0o6755, 0).expect("mknod of a regular file");
        assert_eq!(mode_of(&h.host("node")), 0o755, "{what}");
        // (mkdir(2) itself ignores setgid: a directory only inherits it.)
        let dir = h.mkdir(ROOT, "dir", libc::S_IFDIR | 0o6775).expect("mkdir");
        assert_eq!(mode_of(&h.host("dir")), 0o775, "{what}: mkdir");

        // chmod likewise, whatever file type the guest claims.
        let chmod_to = |mode: u32| SetattrIn { mode, ..setattr_in(SetattrValid::MODE.bits()) };
        for mode in [libc::S_IFREG | 0o4755, libc::S_IFREG | 0o2755, libc::S_IFDIR | 0o6755, 0o4711] {
            let attr = h.setattr(node.nodeid, chmod_to(mode)).expect("chmod");
            assert_eq!(attr.attr.mode & 0o7000, 0, "{what}: chmod {mode:o}");
            assert_eq!(mode_of(&h.host("node")), mode & 0o777, "{what}: chmod {mode:o}");
        }
        h.setattr(dir.nodeid, chmod_to(libc::S_IFDIR | 0o6770)).expect("chmod of the directory");
        assert_eq!(mode_of(&h.host("dir")), 0o2770, "{what}: a setgid directory is kept");

        // Device nodes, character or block, are never made.
        for (name, mode, rdev) in [("null", libc::S_IFCHR | 0o666, 0x103), ("sda", libc::S_IFBLK | 0o660, 0x800)] {
            assert_eq!(h.mknod(ROOT, name, mode, rdev).map(drop), Err(libc::EPERM), "{what}: {name}");
            assert!(std::fs::symlink_metadata(h.host(name)).is_err(), "{what}: {name} landed");
        }

        // File capabilities only where host root is allowed (above);
        // removing them is always allowed.
        let result = h.setxattr(node.nodeid, "security.capability", &CAPABILITY);
        if allow_host_root {
            result.expect("setcap with allow_host_root");
            h.removexattr(node.nodeid, "security.capability").expect("removing a capability");
        } else {
            assert_eq!(result, Err(libc::EPERM), "{what}");
        }
        assert!(!has_capability(&h.host("node")), "{what}");
        h.setxattr(node.nodeid, "user.fine", b"1").expect("user xattr");
    }
}

/// Host files with privilege, as an image may have them.
fn privileged_files(share: &Path) {
    for (name, mode) in [
        ("suid", 0o4755),
        ("sgid", 0o2755),
        ("sgid-nox", 0o2745),
        ("truncated", 0o6755),
        ("trunc-open", 0o4755),
        ("allocated", 0o4755),
        ("mapped", 0o4755),
        ("caps", 0o755),
        ("flagged", 0o6755),
        ("plain", 0o755),
    ] {
        std::fs::write(share.join(name), vec![7u8; 8192]).unwrap();
        chmod(&share.join(name), mode);
    }
    for name in ["caps", "allocated", "mapped"] {
        host_setxattr(&share.join(name), "security.capability", &CAPABILITY);
    }
}

#[test]
fn writes_clear_setuid_setgid_and_capabilities() {
    if !is_root() {
        return;
    }
    for allow_host_root in [false, true] {
        let (base, share) = new_base();
        privileged_files(&share);
        let config = FsConfig { allow_host_root, dax_window_mib: Some(2), ..fs_config(&share, false) };
        let mut h = Harness::around(base, share, Fs::new(&config).expect("device"));
        h.activate();
        h.init();
        h.creds = (0, 0);
        let what = format!("allow_host_root {allow_host_root}");

        // WRITE, without FUSE_WRITE_KILL_SUIDGID: the guest did not ask.
        for (name, after) in [("suid", 0o755), ("sgid", 0o755), ("sgid-nox", 0o2745), ("caps", 0o755)] {
            let f = h.lookup(ROOT, name).expect("lookup");
            let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
            assert_eq!(h.write(f.nodeid, open.fh, 0, b"changed").expect("write"), 7);
            assert_eq!(mode_of(&h.host(name)), after, "{what}: {name} after a write");
            assert!(!has_capability(&h.host(name)), "{what}: {name} keeps its capability");
            h.release(f.nodeid, open.fh).expect("release");
        }
        // A write that asks for it too (as a guest kernel does for a
        // writer without CAP_FSETID), and a truncation that does.
        let f = h.lookup(ROOT, "flagged").expect("lookup");
        let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
        let args = WriteIn { fh: open.fh, size: 1, fuse_flags: WRITE_KILL_PRIV, ..Default::default() };
        assert_eq!(h.call(Opcode::Write, f.nodeid, &[args.as_slice(), b"x"]).obj::<WriteOut>().map(|w| w.size), Ok(1));
        assert_eq!(mode_of(&h.host("flagged")), 0o755, "{what}: a write asking to kill privileges");
        chmod(&h.host("flagged"), 0o4755);
        let kill = SetattrValid::SIZE | SetattrValid::KILL_SUIDGID;
        h.setattr(f.nodeid, SetattrIn { size: 1, ..setattr_in(kill.bits()) })
            .expect("truncate asking to kill privileges");
        assert_eq!(mode_of(&h.host("flagged")), 0o755, "{what}: a truncation asking to kill privileges");
        h.release(f.nodeid, open.fh).expect("release");
        // Truncation, by SETATTR and by OPEN with O_TRUNC.
        let f = h.lookup(ROOT, "truncated").expect("lookup");
        h.setattr(f.nodeid, SetattrIn { size: 10, ..setattr_in(SetattrValid::SIZE.bits()) }).expect("truncate");
        assert_eq!(mode_of(&h.host("truncated")), 0o755, "{what}: truncated");
        let f = h.lookup(ROOT, "trunc-open").expect("lookup");
        let open = h.open(f.nodeid, libc::O_WRONLY | libc::O_TRUNC).expect("open with O_TRUNC");
        assert_eq!(mode_of(&h.host("trunc-open")), 0o755, "{what}: opened with O_TRUNC");
        h.release(f.nodeid, open.fh).expect("release");
        // FALLOCATE.
        let f = h.lookup(ROOT, "allocated").expect("lookup");
        let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
        let falloc = FallocateIn { fh: open.fh, offset: 0, length: 1 << 16, mode: 0, padding: 0 };
        assert_eq!(h.call(Opcode::Fallocate, f.nodeid, &[falloc.as_slice()]).error, 0);
        assert_eq!(mode_of(&h.host("allocated")), 0o755, "{what}: fallocated");
        assert!(!has_capability(&h.host("allocated")), "{what}: fallocated keeps its capability");
        h.release(f.nodeid, open.fh).expect("release");
        // A writable DAX mapping (the guest's stores are no writes the host
        // sees); a read-only one leaves the file alone.
        let f = h.lookup(ROOT, "mapped").expect("lookup");
        let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
        let map = |flags: SetupmappingFlags| SetupmappingIn {
            fh: open.fh,
            foffset: 0,
            len: 4096,
            flags: flags.bits(),
            moffset: 0,
        };
        assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[map(SetupmappingFlags::READ).as_slice()]).error, 0);
        assert_eq!(mode_of(&h.host("mapped")), 0o4755, "{what}: a read-only mapping");
        let writable = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
        assert_eq!(h.call(Opcode::SetupMapping, f.nodeid, &[map(writable).as_slice()]).error, 0);
        assert_eq!(mode_of(&h.host("mapped")), 0o755, "{what}: a writable mapping");
        assert!(!has_capability(&h.host("mapped")), "{what}: mapped keeps its capability");
        h.release(f.nodeid, open.fh).expect("release");
        // Files without privilege are left as they are.
        let f = h.lookup(ROOT, "plain").expect("lookup");
        let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
        h.write(f.nodeid, open.fh, 0, b"x").expect("write");
        assert_eq!(mode_of(&h.host("plain")), 0o755);
        h.release(f.nodeid, open.fh).expect("release");
        let (_, errors, bad_chains) = h.counts();
        assert_eq!((errors, bad_chains), (0, 0));
    }
}

/// What clearing privileges costs a write: the same 4 KiB WRITE served
/// many times, and the fstat that clearing adds to each, alone. Prints
/// both; checks only that the device kept serving.
#[test]
fn write_loop_cost_of_clearing_privileges() {
    const WRITES: u32 = 20_000;
    let mut h = Harness::with_limits(false, FsLimits::default(), |share| {
        std::fs::write(share.join("f"), b"").unwrap();
    });
    h.init();
    let f = h.lookup(ROOT, "f").expect("lookup");
    let open = h.open(f.nodeid, libc::O_RDWR).expect("open");
    let block = [5u8; 4096];
    let started = Instant::now();
    for i in 0..WRITES {
        assert_eq!(h.write(f.nodeid, open.fh, u64::from(i % 256) * 4096, &block), Ok(4096));
    }
    let per_write = started.elapsed().as_nanos() / u128::from(WRITES);
    let ctx = fuse_backend_rs::api::filesystem::Context::default();
    let fs = h.dev().backend.fs.clone();
    let started = Instant::now();
    for _ in 0..WRITES {
        fs.remove_privs(&ctx, f.nodeid, Some(open.fh), false).expect("remove_privs");
    }
    let per_check = started.elapsed().as_nanos() / u128::from(WRITES);
    eprintln!("virtio-fs 4 KiB WRITE: {per_write} ns each, of which the setuid/setgid check: {per_check} ns");
    assert_eq!(std::fs::metadata(h.host("f")).unwrap().len(), 256 * 4096);
}

/// Symlinks to host files outside the share: changes aimed at them reach
/// the link or fail, never the target.
#[test]
fn owner_mode_and_xattr_changes_through_a_symlink_stay_on_the_link() {
    if !is_root() {
        return;
    }
    let mut h = Harness::with_config(host_root, FsLimits::default(), |share| {
        let secret = share.parent().unwrap().join("shadow");
        std::fs::write(&secret, b"root:*:1::::::\n").unwrap();
        chmod(&secret, 0o600);
        std::os::unix::fs::symlink(&secret, share.join("to-shadow")).unwrap();
        std::os::unix::fs::symlink("../../..", share.join("up")).unwrap();
    });
    let secret = h.base.as_path().join("shadow");
    let before = (snapshot(h.base.as_path()), owner(&secret), std::fs::metadata(&secret).unwrap().ctime());
    h.init();
    h.creds = (0, 0);
    let link = h.lookup(ROOT, "to-shadow").expect("lookup");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    let chown = SetattrIn { uid: 1000, gid: 1000, ..setattr_in((SetattrValid::UID | SetattrValid::GID).bits()) };
    h.setattr(link.nodeid, chown).expect("chown acts on the link");
    assert_eq!(owner(&h.host("to-shadow")), (1000, 1000));
    let _ = h.setattr(link.nodeid, SetattrIn { mode: 0o4777, ..setattr_in(SetattrValid::MODE.bits()) });
    // Where security xattrs are allowed on symlinks, one lands on the link.
    if h.setxattr(link.nodeid, "security.capability", &CAPABILITY).is_ok() {
        assert!(has_capability(&h.host("to-shadow")), "the capability is on the link");
    }
    assert!(!has_capability(&secret));
    assert!(h.setxattr(link.nodeid, "user.x", b"1").is_err());
    assert!(h.open(link.nodeid, libc::O_RDONLY).is_err());
    assert!(h.create(link.nodeid, "x", libc::O_RDWR, 0o644).is_err());
    let hard = h.link(link.nodeid, ROOT, "hard").expect("a hard link to the symlink");
    assert_eq!(hard.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    let up = h.lookup(ROOT, "up").expect("lookup");
    assert!(h.lookup(up.nodeid, "etc").is_err());
    assert!(h.opendir(up.nodeid).is_err());

    assert_eq!(owner(&secret), before.1, "the target's owner");
    assert_eq!(std::fs::metadata(&secret).unwrap().ctime(), before.2, "the target's inode is untouched");
    let after = snapshot(h.base.as_path());
    let outside = |snap: &[(PathBuf, u64, u32, Vec<u8>)]| -> Vec<_> {
        snap.iter().filter(|(path, ..)| !path.starts_with(&h.share)).cloned().collect()
    };
    assert_eq!(outside(&after), outside(&before.0), "nothing outside the share changed");
}

#[test]
fn statx_tmpfile_and_syncfs_get_enosys_quietly() {
    let mut h = Harness::new(false);
    h.init();
    for opcode in [50u32, 51, 52] {
        let (len, unique) = h.write_request(opcode, ROOT, &[&[0u8; 64]]);
        h.push_chain(REQUEST_QUEUE, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
        let used = h.run(REQUEST_QUEUE);
        let reply = h.read_reply(used[0].1);
        assert_eq!((reply.error, reply.unique), (libc::ENOSYS, unique), "opcode {opcode}");
    }
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 0), "a kernel's fallbacks are not errors");
}

#[test]
fn share_limits_fit_the_descriptor_limit() {
    let default = FsLimits::default();
    assert_eq!(super::super::fd_budget(0), super::super::VMM_FD_RESERVE);
    for shares in [1, 2, 5] {
        let budget = super::super::fd_budget(shares);
        assert_eq!(FsLimits::within(budget, shares), default, "{shares} shares at their budget");
        assert!(default.fit(budget, shares));
        assert!(!default.fit(budget - 1, shares));
        for nofile in [budget - 1, budget / 3, 20_000, 4096] {
            let limits = FsLimits::within(nofile, shares);
            assert!(limits.fit(nofile, shares), "{shares} shares in {nofile}: {limits:?}");
            assert!(limits.max_inodes >= 16 * limits.max_handles - 16, "{limits:?}");
            assert!(limits != default && limits.max_inodes <= default.max_inodes, "{limits:?}");
            assert!(limits.max_handles <= default.max_handles, "{limits:?}");
        }
    }
    // Below the usable floor the limits stay usable, and say they do not fit.
    let floor = FsLimits::within(1024, 4);
    assert_eq!(floor, FsLimits { max_inodes: 64, max_handles: 16 });
    assert!(!floor.fit(1024, 4));
}

const FD_CHILD_ENV: &str = "HUSK_FS_FD_CHILD";

/// Runs [`fd_exhaustion_child`] in a process of its own (it lowers
/// RLIMIT_NOFILE, which the other tests share).
#[test]
fn one_exhausted_share_leaves_the_others_working() {
    let exe = std::env::current_exe().expect("test binary");
    let name = "devices::virtio::fs::tests::privilege::fd_exhaustion_child";
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(FD_CHILD_ENV, "1")
        .output()
        .expect("running the child");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

/// Descriptors of this process open on something under `dir`.
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
#[ignore = "run by one_exhausted_share_leaves_the_others_working in a process of its own"]
fn fd_exhaustion_child() {
    if std::env::var_os(FD_CHILD_ENV).is_none() {
        eprintln!("skipped: lowers RLIMIT_NOFILE; run through one_exhausted_share_leaves_the_others_working");
        return;
    }
    // Room for two shares of 200 descriptors beside the VMM's reserve.
    let nofile = super::super::VMM_FD_RESERVE + 2 * 200;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = nofile;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "{}", std::io::Error::last_os_error());
    }
    let limits = super::super::share_limits(2);
    assert!(limits.fit(nofile, 2), "{limits:?}");
    // A VMM without shares has nothing to shrink (it used to log that its
    // limit was too low for "0 share(s)").
    assert_eq!(super::super::share_limits(0), FsLimits::default());
    assert!(limits.max_inodes < FsLimits::default().max_inodes);
    let populate = |share: &Path| {
        for i in 0..limits.max_inodes + 50 {
            std::fs::write(share.join(format!("f{i}")), b"x").unwrap();
        }
    };
    let mut a = Harness::with_limits(false, limits, populate);
    let mut b = Harness::with_limits(false, limits, populate);
    a.init();
    b.init();

    // The guest holds every inode and handle share A allows...
    let mut held = Vec::new();
    let mut name = 0;
    let emfile = loop {
        let entry = a.lookup(ROOT, &format!("f{name}")).expect("lookup within the limit");
        name += 1;
        match a.open(entry.nodeid, libc::O_RDONLY) {
            Ok(open) => held.push((entry.nodeid, open.fh)),
            Err(err) => break err,
        }
    };
    assert_eq!(emfile, libc::EMFILE);
    assert_eq!(held.len(), limits.max_handles);
    let enfile = loop {
        match a.lookup(ROOT, &format!("f{name}")) {
            Ok(_) => name += 1,
            Err(err) => break err,
        }
    };
    assert_eq!(enfile, libc::ENFILE);
    assert_eq!(a.held(), (limits.max_inodes, limits.max_handles));
    assert_eq!(a.create(ROOT, "more", libc::O_RDWR, 0o644).map(drop), Err(libc::ENFILE));
    assert!(fds_under(&a.share) as u64 <= limits.fds(), "share A holds no more than its limits");

    // ...and share B, the VMM's own files and a new descriptor still work.
    let (entry, open) = b.create(ROOT, "new", libc::O_RDWR, 0o644).expect("create in share B");
    assert_eq!(b.write(entry.nodeid, open.fh, 0, b"still fine"), Ok(10));
    assert_eq!(b.read(entry.nodeid, open.fh, 0, 64).expect("read"), b"still fine");
    let f0 = b.lookup(ROOT, "f0").expect("lookup in share B");
    b.open(f0.nodeid, libc::O_RDONLY).expect("open in share B");
    std::fs::File::open("/dev/null").expect("the process has descriptors left");

    // Releasing in A makes room there again.
    let (nodeid, fh) = held.pop().unwrap();
    a.release(nodeid, fh).expect("release");
    a.open(nodeid, libc::O_RDONLY).expect("open after a release");
}
