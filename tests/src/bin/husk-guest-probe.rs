//! `husk-guest-probe`: the guest half of the integration tests, put in the
//! test initramfs and started by the agent (`husk.run=/bin/husk-guest-probe,CMD,ARG…`).
//! It prints what it checked on the console and exits non-zero on failure.
//!
//!   vsock-echo PORT                       echo every connection to vsock PORT
//!   vsock-to-host PORT STREAMS BYTES      STREAMS connections to the host's PORT,
//!                                         BYTES each way per stream, checked
//!   tcp-echo PORT                         echo every TCP connection to PORT
//!   fs-check DIR                          file-system operations in DIR
//!   fs-readonly DIR                       writes in DIR must fail with EROFS
//!   fs-privilege SQUASHED HOSTROOT        as root, tries to plant setuid files, device
//!                                         nodes, file capabilities and root-owned files
//!                                         in both shares (the first squashes root, the
//!                                         second allows host root), and to reach the
//!                                         host's /etc/shadow through symlinks
//!   fs-dax DAXDIR PLAINDIR                DAXDIR is mounted with DAX and PLAINDIR
//!                                         without; fs-check in DAXDIR, then a timed
//!                                         sequential read of seq.bin in each
//!   pattern STREAM BYTES                  write stream STREAM's test pattern to stdout
//!                                         (64 KiB writes): an output a reader can check
//!   clock                                 print the boot clock (CLOCK_BOOTTIME, µs)
//!                                         as the first thing it does: a container's
//!                                         start time as the guest sees it
//!   fs-bench DIR FILES                    metadata ops/s (create, stat, unlink FILES
//!                                         files) and sequential read MiB/s of DIR/big.bin

use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use husk_tests::data::pattern;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("clock") {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        println!("{}", ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000);
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    let result = match arg(0) {
        "vsock-echo" => vsock_echo(number(1) as u32),
        "vsock-to-host" => vsock_to_host(number(1) as u32, number(2) as usize, number(3) as usize),
        "tcp-echo" => tcp_echo(number(1) as u16),
        "fs-check" => fs_check(Path::new(arg(1))),
        "fs-readonly" => fs_readonly(Path::new(arg(1))),
        "fs-privilege" => fs_privilege(Path::new(arg(1)), false).and_then(|()| fs_privilege(Path::new(arg(2)), true)),
        "fs-dax" => fs_dax(Path::new(arg(1)), Path::new(arg(2))),
        "fs-bench" => fs_bench(Path::new(arg(1)), number(2) as usize),
        "pattern" => write_pattern(number(1) as usize, number(2) as usize),
        other => Err(io::Error::other(format!("unknown command {other:?}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("husk-guest-probe: FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_pattern(stream: usize, bytes: usize) -> io::Result<()> {
    let data = pattern(stream, bytes);
    let mut stdout = io::stdout().lock();
    for chunk in data.chunks(64 * 1024) {
        stdout.write_all(chunk)?;
    }
    stdout.flush()
}

fn vsock_socket() -> io::Result<i32> {
    // SAFETY: socket() with constant arguments; the fd is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const VSOCK_ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn vsock_echo(port: u32) -> io::Result<()> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: a valid sockaddr_vm of the given length; fd is ours.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), VSOCK_ADDR_LEN) } < 0
        || unsafe { libc::listen(fd, 64) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    println!("husk-guest-probe: vsock echo listening on port {port}");
    loop {
        // SAFETY: accept on our listening socket.
        let conn = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if conn < 0 {
            continue;
        }
        // SAFETY: conn is a connected stream socket we now own.
        let stream = unsafe { UnixStream::from_raw_fd(conn) };
        std::thread::spawn(move || echo(stream));
    }
}

fn echo<S: Read + Write>(mut stream: S) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn vsock_to_host(port: u32, streams: usize, bytes: usize) -> io::Result<()> {
    let workers: Vec<_> = (0..streams)
        .map(|stream| {
            std::thread::spawn(move || -> io::Result<()> {
                let fd = vsock_socket()?;
                let addr = vsock_addr(libc::VMADDR_CID_HOST, port);
                // SAFETY: a valid sockaddr_vm of the given length.
                if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_vm).cast(), VSOCK_ADDR_LEN) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: fd is a connected socket we own.
                let mut conn = unsafe { UnixStream::from_raw_fd(fd) };
                let data = pattern(stream, bytes);
                let mut reader = conn.try_clone()?;
                let expected = data.clone();
                let checker = std::thread::spawn(move || -> io::Result<()> {
                    let mut got = vec![0u8; expected.len()];
                    reader.read_exact(&mut got)?;
                    if got != expected {
                        return Err(io::Error::other("echoed data differs"));
                    }
                    Ok(())
                });
                conn.write_all(&data)?;
                checker.join().map_err(|_| io::Error::other("checker panicked"))??;
                Ok(())
            })
        })
        .collect();
    for (i, worker) in workers.into_iter().enumerate() {
        worker
            .join()
            .map_err(|_| io::Error::other("worker panicked"))?
            .map_err(|e| io::Error::other(format!("stream {i}: {e}")))?;
    }
    println!("husk-guest-probe: vsock-to-host ok streams={streams} bytes={bytes}");
    Ok(())
}

fn tcp_echo(port: u16) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    println!("husk-guest-probe: tcp echo listening on port {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || echo(stream));
    }
    Ok(())
}

fn check(ok: bool, what: &str) -> io::Result<()> {
    if ok {
        println!("husk-guest-probe: ok {what}");
        Ok(())
    } else {
        Err(io::Error::other(format!("check failed: {what}")))
    }
}

fn fs_check(dir: &Path) -> io::Result<()> {
    let file = dir.join("from-guest.txt");
    std::fs::write(&file, b"written in the guest\n")?;
    check(std::fs::read(&file)? == b"written in the guest\n", "create/write/read")?;
    std::fs::rename(&file, dir.join("renamed.txt"))?;
    check(!file.exists() && dir.join("renamed.txt").exists(), "rename")?;
    std::fs::create_dir(dir.join("subdir"))?;
    std::fs::write(dir.join("subdir/inner"), b"x")?;
    std::fs::remove_file(dir.join("subdir/inner"))?;
    std::fs::remove_dir(dir.join("subdir"))?;
    check(!dir.join("subdir").exists(), "mkdir/unlink/rmdir")?;
    std::os::unix::fs::symlink("renamed.txt", dir.join("link"))?;
    check(std::fs::read_link(dir.join("link"))? == Path::new("renamed.txt"), "symlink/readlink")?;
    std::fs::hard_link(dir.join("renamed.txt"), dir.join("hard"))?;
    check(std::fs::metadata(dir.join("hard"))?.nlink() == 2, "hard link")?;
    std::fs::set_permissions(dir.join("renamed.txt"), std::fs::Permissions::from_mode(0o640))?;
    check(std::fs::metadata(dir.join("renamed.txt"))?.permissions().mode() & 0o777 == 0o640, "chmod")?;
    let f = std::fs::OpenOptions::new().write(true).open(dir.join("renamed.txt"))?;
    f.set_len(4)?;
    check(std::fs::metadata(dir.join("renamed.txt"))?.len() == 4, "truncate")?;
    // A large file, written and read back in full.
    let big = pattern(7, 8 << 20);
    std::fs::write(dir.join("big.bin"), &big)?;
    check(std::fs::read(dir.join("big.bin"))? == big, "8 MiB file round trip")?;
    // Extended attributes, checked again from the host.
    let path = std::ffi::CString::new(dir.join("renamed.txt").as_os_str().as_encoded_bytes()).unwrap();
    let (name, value) = (c"user.husk", b"from the guest");
    // SAFETY: valid C strings and a value buffer of the given length.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check(rc == 0, "setxattr user.husk")?;
    let mut read_back = [0u8; 64];
    // SAFETY: as above, into a buffer of the given length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), read_back.as_mut_ptr().cast(), read_back.len()) };
    check(n == value.len() as isize && &read_back[..value.len()] == value, "getxattr user.husk")?;
    // The host's file, seen from here.
    check(std::fs::read(dir.join("from-host.txt"))? == b"written on the host\n", "read a host file")?;
    // Escapes stay inside the share: `..` of the mount point is the guest's
    // own directory, and a symlink to an absolute path resolves in the
    // guest (whose initramfs has no /etc/hostname), not on the host.
    let parent: Vec<_> = std::fs::read_dir(dir.join(".."))?.flatten().map(|e| e.file_name()).collect();
    let share_name = dir.file_name().unwrap_or_default().to_owned();
    check(parent == vec![share_name], "`..` of the share is the guest's mount directory")?;
    std::os::unix::fs::symlink("/etc/hostname", dir.join("abs-link"))?;
    let followed = std::fs::read(dir.join("abs-link"));
    check(
        matches!(followed, Err(ref e) if e.kind() == io::ErrorKind::NotFound),
        "an absolute symlink stays in the guest",
    )?;
    println!("husk-guest-probe: fs-check done");
    Ok(())
}

fn fs_readonly(dir: &Path) -> io::Result<()> {
    check(std::fs::read(dir.join("from-host.txt"))? == b"written on the host\n", "read on a read-only share")?;
    let refused = |r: io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS));
    check(refused(std::fs::write(dir.join("new.txt"), b"x")), "create refused with EROFS")?;
    check(refused(std::fs::remove_file(dir.join("from-host.txt"))), "unlink refused with EROFS")?;
    check(refused(std::fs::create_dir(dir.join("d"))), "mkdir refused with EROFS")?;
    println!("husk-guest-probe: fs-readonly done");
    Ok(())
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in paths")
}

/// The errno of a libc call's -1 result, or 0.
fn errno_of(rc: libc::c_int) -> i32 {
    if rc == 0 {
        0
    } else {
        io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// A vfs_cap_data (revision 2) granting CAP_NET_BIND_SERVICE, effective.
fn capability_value() -> [u8; 20] {
    let mut value = [0u8; 20];
    value[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    value[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    value
}

/// What the guest's root tries in `dir`; the host checks what landed. It
/// fails only where the guest sees something a share must not allow.
fn fs_privilege(dir: &Path, host_root: bool) -> io::Result<()> {
    // SAFETY: a getter without arguments or failure modes.
    check(unsafe { libc::geteuid() } == 0, "running as root in the guest")?;
    let which = if host_root { "allow_host_root share" } else { "squashing share" };
    let (root_uid, root_gid) = if host_root { (0, 0) } else { (65534, 65534) };

    // A setuid, then setgid, binary of our own, given to root.
    let tool = dir.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\nid\n")?;
    for mode in [0o4755, 0o2755, 0o6755] {
        // SAFETY: a valid C path.
        let rc = unsafe { libc::chmod(c_path(&tool).as_ptr(), mode) };
        let seen = std::fs::metadata(&tool)?.permissions().mode() & 0o7777;
        println!("husk-guest-probe: {which}: chmod {mode:o}: errno {} -> {seen:o}", errno_of(rc));
        check(seen & 0o6000 == 0, &format!("{which}: chmod {mode:o} leaves no setuid/setgid bit"))?;
    }
    // SAFETY: a valid C path.
    let rc = unsafe { libc::chown(c_path(&tool).as_ptr(), 0, 0) };
    check(rc == 0, &format!("{which}: chown 0:0 answers success"))?;
    let meta = std::fs::metadata(&tool)?;
    check(
        (meta.uid(), meta.gid()) == (root_uid, root_gid),
        &format!("{which}: the chowned file shows as {root_uid}:{root_gid} ({}:{})", meta.uid(), meta.gid()),
    )?;
    let created = std::fs::metadata(dir.join("tool"))?;
    println!("husk-guest-probe: {which}: tool is {}:{} mode {:o}", created.uid(), created.gid(), created.mode());

    // Writing to a setuid-root file the host made: as root (CAP_FSETID)
    // the guest kernel neither clears the bits itself nor asks the server
    // to, and may show its cached mode for a while; the host checks.
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("host-suid"))?;
    f.write_all(b"appended by the guest\n")?;
    drop(f);

    // Device nodes.
    for (name, kind, dev) in
        [("null-dev", libc::S_IFCHR, libc::makedev(1, 3)), ("sda-dev", libc::S_IFBLK, libc::makedev(8, 0))]
    {
        // SAFETY: a valid C path.
        let rc = unsafe { libc::mknod(c_path(&dir.join(name)).as_ptr(), kind | 0o666, dev) };
        let errno = errno_of(rc);
        check(errno == libc::EPERM, &format!("{which}: mknod {name} refused with EPERM (errno {errno})"))?;
    }

    // File capabilities.
    let value = capability_value();
    // SAFETY: valid C strings and a value of the given length.
    let rc = unsafe {
        libc::setxattr(c_path(&tool).as_ptr(), c"security.capability".as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    let errno = errno_of(rc);
    if host_root {
        // Allowed by the share; whether the host's file system takes it is
        // the host's to check.
        println!("husk-guest-probe: {which}: setcap: errno {errno}");
        std::fs::write(dir.join("setcap.errno"), format!("{errno}\n"))?;
    } else {
        check(errno == libc::EPERM, &format!("{which}: setcap refused with EPERM (errno {errno})"))?;
    }

    // A setgid directory (allowed: only group inheritance).
    std::fs::create_dir(dir.join("sgid-dir"))?;
    // SAFETY: a valid C path.
    unsafe { libc::chmod(c_path(&dir.join("sgid-dir")).as_ptr(), 0o2775) };

    // Symlinks to the host's /etc/shadow: they resolve in the guest (whose
    // initramfs has no /etc/shadow), never on the host.
    let depth = "../".repeat(12);
    std::os::unix::fs::symlink("/etc/shadow", dir.join("shadow-link"))?;
    std::os::unix::fs::symlink(format!("{depth}etc/shadow"), dir.join("shadow-up"))?;
    for link in ["shadow-link", "shadow-up"] {
        let read = std::fs::read(dir.join(link));
        let what = match &read {
            Ok(bytes) => format!("{} bytes", bytes.len()),
            Err(e) => e.to_string(),
        };
        // Whatever it read, the host checks it is not its shadow file.
        std::fs::write(dir.join(format!("{link}.read")), read.unwrap_or_default())?;
        println!("husk-guest-probe: {which}: reading through {link}: {what}");
    }
    println!("husk-guest-probe: fs-privilege done in {}", dir.display());
    Ok(())
}

/// The mount options of the file system mounted on `dir`, from /proc/mounts.
fn mount_options(dir: &Path) -> io::Result<(String, Vec<String>)> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let dir = dir.to_str().unwrap_or_default();
    mounts
        .lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&dir) && fields.len() >= 4)
                .then(|| (fields[2].to_owned(), fields[3].split(',').map(str::to_owned).collect()))
        })
        .ok_or_else(|| io::Error::other(format!("{dir} is not in /proc/mounts")))
}

/// Whether mount options say DAX (`dax`, `dax=always` or `dax=inode`).
fn has_dax(options: &[String]) -> bool {
    options.iter().any(|o| o == "dax" || o.starts_with("dax="))
}

/// Reads `path` sequentially in 1 MiB reads from the host (the guest's
/// caches dropped first); returns the bytes read and MiB/s.
fn timed_read(path: &Path) -> io::Result<(usize, f64)> {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3");
    let started = std::time::Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok((total, total as f64 / started.elapsed().as_secs_f64() / (1 << 20) as f64))
}

fn fs_dax(dax_dir: &Path, plain_dir: &Path) -> io::Result<()> {
    let (fstype, options) = mount_options(dax_dir)?;
    check(
        fstype == "virtiofs" && has_dax(&options),
        &format!("{} is virtiofs with DAX ({options:?})", dax_dir.display()),
    )?;
    let (fstype, options) = mount_options(plain_dir)?;
    check(
        fstype == "virtiofs" && !has_dax(&options),
        &format!("{} is virtiofs without DAX ({options:?})", plain_dir.display()),
    )?;
    fs_check(dax_dir)?;
    // The same file, written on the host in both shares, read through each.
    let (dax_bytes, dax_speed) = timed_read(&dax_dir.join("seq.bin"))?;
    let (plain_bytes, plain_speed) = timed_read(&plain_dir.join("seq.bin"))?;
    let expected = std::fs::metadata(plain_dir.join("seq.bin"))?.len() as usize;
    check(dax_bytes == expected && plain_bytes == expected, "seq.bin read in full through both shares")?;
    check(
        std::fs::read(dax_dir.join("seq.bin"))? == std::fs::read(plain_dir.join("seq.bin"))?,
        "the same bytes with and without DAX",
    )?;
    // Also into the plain share, where the host reads it: a kernel message
    // (an RCU stall report in the nested test host) can split a console line.
    let line = format!("seq-read bytes={expected} dax_mib_per_s={dax_speed:.1} plain_mib_per_s={plain_speed:.1}");
    std::fs::write(plain_dir.join("seq-read.txt"), format!("{line}\n"))?;
    println!("husk-guest-probe: {line}");
    println!("husk-guest-probe: fs-dax done");
    Ok(())
}

/// Prints one JSON line of measurements: `{"bench": {...}}`.
fn fs_bench(dir: &Path, files: usize) -> io::Result<()> {
    let started = std::time::Instant::now();
    for i in 0..files {
        let path = dir.join(format!("meta-{i}"));
        std::fs::write(&path, b"")?;
        std::fs::metadata(&path)?;
        std::fs::remove_file(&path)?;
    }
    let ops_per_s = (3 * files) as f64 / started.elapsed().as_secs_f64();
    let (total, mib_per_s) = timed_read(&dir.join("big.bin"))?;
    println!("{{\"bench\": {{\"fs_metadata_ops_per_s\": {ops_per_s:.1}, \"fs_seq_read_mib_per_s\": {mib_per_s:.1}, \"fs_read_bytes\": {total}}}}}");
    Ok(())
}
