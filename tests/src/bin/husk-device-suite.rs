//! `husk-device-suite`: the host half of the virtio device tests, run inside
//! the test host (where the project's kernel boots under KVM). Each suite
//! boots husk-vmm with the test initramfs and the device under test, drives
//! the guest's husk-guest-probe from the host side, prints what it checked
//! and exits non-zero on the first failure.
//!
//!   husk-device-suite vsock --vmm PATH --kernel PATH --initrd PATH
//!   husk-device-suite fs    --vmm PATH --kernel PATH --initrd PATH
//!   husk-device-suite net   --vmm PATH --kernel PATH --initrd PATH
//!   husk-device-suite bench --vmm PATH --kernel PATH --initrd PATH
//!       one `BENCH {json}` line per measurement: vsock and TCP round trips and
//!       echo throughput, TCP over a veth pair beside it, virtio-fs metadata
//!       ops/s and sequential reads beside the same operations on this host

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use husk_tests::data::pattern;
use husk_tests::guest_vm::{host_tap, run, vsock_connect, Cleanup, GuestArgs, Setup, Vm};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(Subcommand, Clone, Copy)]
enum Suite {
    Vsock,
    Fs,
    Net,
    Bench,
    /// A TCP echo server (the far end of the veth baseline).
    #[command(hide = true)]
    TcpEchoServer {
        port: u16,
    },
}

const PROBE: &str = "/bin/husk-guest-probe";

/// Sends `bytes` of stream `n`'s pattern and checks the echo.
fn echo_check(mut stream: UnixStream, n: usize, bytes: usize) -> Result<()> {
    let data = pattern(n, bytes);
    let mut reader = stream.try_clone()?;
    let expected = data.clone();
    let checker = std::thread::spawn(move || -> Result<()> {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).context("reading the echo")?;
        ensure!(got == expected, "the echo differs from what was sent");
        Ok(())
    });
    stream.write_all(&data)?;
    checker.join().map_err(|_| anyhow::anyhow!("checker panicked"))?
}

fn vsock_suite(setup: &Setup) -> Result<()> {
    // Host to guest: the guest echoes on port 5000.
    let uds = setup.work.join("v.sock");
    let devices = serde_json::json!({ "vsock": { "guest_cid": 3, "uds_path": uds } });
    let mut vm = Vm::boot(setup, "vsock-echo", &format!("husk.run={PROBE},vsock-echo,5000"), devices)?;
    vm.wait_for("vsock echo listening on port 5000")?;
    echo_check(vsock_connect(&uds, 5000)?, 0, 4096)?;
    println!("ok: host to guest echo");

    let agent = husk_runtime::agent_client::AgentClient::new(&uds);
    let pong = agent.ping().context("pinging the agent")?;
    println!(
        "ok: agent {} answers a ping on vsock port {} (guest uptime {} µs)",
        pong.agent_version,
        husk_api::agent_protocol::AGENT_PORT,
        pong.uptime_us
    );

    let streams = 16;
    let per_stream = 4 << 20;
    let started = Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|n| {
            let uds = uds.clone();
            std::thread::spawn(move || echo_check(vsock_connect(&uds, 5000)?, n, per_stream))
        })
        .collect();
    for (n, worker) in workers.into_iter().enumerate() {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("stream {n} panicked"))?
            .with_context(|| format!("stream {n}; {}", vm.report()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ok: {streams} concurrent streams, {} MiB each way, checked ({:.1} MiB/s echoed)",
        (streams * per_stream) >> 20,
        (streams * per_stream) as f64 / secs / (1 << 20) as f64
    );

    // The host closes mid-stream: the device cleans up and keeps serving.
    let mut half = vsock_connect(&uds, 5000)?;
    half.write_all(&pattern(99, 1 << 20)[..300_000])?;
    drop(half);
    std::thread::sleep(Duration::from_millis(500));
    echo_check(vsock_connect(&uds, 5000)?, 1, 65536)?;
    println!("ok: host closed mid-stream; the next stream works");

    // Round trips, for the record.
    let mut stream = vsock_connect(&uds, 5000)?;
    let mut byte = [0u8; 1];
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
    }
    println!("ok: round trip {:.0} us (mean of {rounds})", started.elapsed().as_secs_f64() * 1e6 / rounds as f64);
    drop(vm);

    // Guest to host: the guest connects to host port 6000, served by an echo
    // listener at <uds_path>_6000.
    let uds2 = setup.work.join("v2.sock");
    // The listener counts what it echoed on each connection: the proof that
    // the guest's streams crossed, whatever reaches the console (a CI run
    // once had the VM exit 0 with the probe's ok line missing from it).
    let listener = UnixListener::bind(format!("{}_6000", uds2.display()))?;
    let echoed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let counts = echoed.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut reader = conn;
                let mut writer = reader.try_clone().expect("clone");
                let copied = std::io::copy(&mut reader, &mut writer).unwrap_or(0);
                counts.lock().unwrap_or_else(|e| e.into_inner()).push(copied);
            });
        }
    });
    let (streams, bytes) = (16, 1 << 20);
    let devices = serde_json::json!({ "vsock": { "guest_cid": 3, "uds_path": uds2 } });
    let mut vm =
        Vm::boot(setup, "vsock-to-host", &format!("husk.run={PROBE},vsock-to-host,6000,{streams},{bytes}"), devices)?;
    let code = vm.wait_exit()?;
    ensure!(code == 0, "the guest's streams to the host failed (VMM exit {code}):\n{}", vm.console());
    // The guest's last read can end before the host's copy loop sees EOF.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = echoed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if seen.len() >= streams || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        seen.len() == streams && seen.iter().all(|&n| n == bytes as u64),
        "the host echoed {seen:?} (want {streams} connections of {bytes} bytes):\n{}",
        vm.console()
    );
    if !vm.console().contains(&format!("vsock-to-host ok streams={streams}")) {
        println!("note: the probe's ok line is missing from the console (exit 0 and the host's counts say it passed)");
    }
    println!("ok: guest to host, {streams} streams of 1 MiB each way");
    Ok(())
}

fn fs_suite(setup: &Setup) -> Result<()> {
    // Not under /tmp: the test host's tmpfs (Linux 6.1) has no user.*
    // xattrs, and the share must support what the guest is asked to do.
    let scratch = husk_tests::paths::artifacts_dir().join(format!("testhost/scratch/fs-suite-{}", std::process::id()));
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _scratch = RemoveDir(scratch.clone());
    let share = scratch.join("share");
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("from-host.txt"), b"written on the host\n")?;
    let devices = serde_json::json!({ "fs": [{ "fs_id": "share", "tag": "share", "shared_dir": share }] });
    let mut vm = Vm::boot(
        setup,
        "fs-check",
        &format!("husk.mount=share:/mnt/share husk.run={PROBE},fs-check,/mnt/share"),
        devices,
    )?;
    let code = vm.wait_exit()?;
    ensure!(code == 0, "fs-check failed in the guest (VMM exit {code}):\n{}", vm.console());
    fs_check_seen_on_host(&share)?;
    println!("ok: guest file operations (incl. xattr, hard and symbolic links) seen on the host");

    // DAX: the same checks in a share mounted with dax (its files mapped
    // through the device's DAX window), beside a share without, and a
    // sequential read through each.
    let dax = scratch.join("dax-share");
    let plain = scratch.join("plain-share");
    std::fs::create_dir_all(&dax)?;
    std::fs::create_dir_all(&plain)?;
    std::fs::write(dax.join("from-host.txt"), b"written on the host\n")?;
    let seq = pattern(11, 64 << 20);
    std::fs::write(dax.join("seq.bin"), &seq)?;
    std::fs::write(plain.join("seq.bin"), &seq)?;
    let devices = serde_json::json!({ "fs": [
        { "fs_id": "dax", "tag": "dax", "shared_dir": dax, "dax_window_mib": 128 },
        { "fs_id": "plain", "tag": "plain", "shared_dir": plain },
    ] });
    // The plain share outside /mnt: fs-check looks at what `..` of its
    // share holds.
    let agent = format!(
        "husk.mount=dax:/mnt/dax:dax husk.mount=plain:/nodax/plain husk.run={PROBE},fs-dax,/mnt/dax,/nodax/plain"
    );
    let mut vm = Vm::boot(setup, "fs-dax", &agent, devices)?;
    let code = vm.wait_exit()?;
    let console = vm.console();
    ensure!(code == 0, "fs-dax failed in the guest (VMM exit {code}):\n{console}");
    fs_check_seen_on_host(&dax)?;
    println!("ok: fs-check passes in a DAX share (mounted with dax, per /proc/mounts in the guest)");
    let line = std::fs::read_to_string(plain.join("seq-read.txt"))
        .with_context(|| format!("the guest left no seq-read.txt in the plain share; its console:\n{console}"))?;
    let line = line.trim_end();
    let field = |name: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
            .with_context(|| format!("no {name} in {line:?}"))
    };
    let (bytes, with_dax, without) = (field("bytes")?, field("dax_mib_per_s")?, field("plain_mib_per_s")?);
    println!("ok: sequential read of {bytes} bytes with DAX: {with_dax} MiB/s");
    println!("ok: sequential read of {bytes} bytes without DAX: {without} MiB/s");
    ensure!(std::fs::read(dax.join("seq.bin"))? == seq, "seq.bin is unchanged on the host");

    let ro = scratch.join("ro-share");
    std::fs::create_dir_all(&ro)?;
    std::fs::write(ro.join("from-host.txt"), b"written on the host\n")?;
    let devices = serde_json::json!({ "fs": [{ "fs_id": "ro", "tag": "ro", "shared_dir": ro, "read_only": true }] });
    let mut vm = Vm::boot(
        setup,
        "fs-readonly",
        &format!("husk.mount=ro:/mnt/ro:ro husk.run={PROBE},fs-readonly,/mnt/ro"),
        devices,
    )?;
    let code = vm.wait_exit()?;
    ensure!(code == 0, "fs-readonly failed in the guest (VMM exit {code}):\n{}", vm.console());
    let entries: Vec<_> = std::fs::read_dir(&ro)?.flatten().map(|e| e.file_name()).collect();
    ensure!(entries == vec![std::ffi::OsString::from("from-host.txt")], "the read-only share changed: {entries:?}");
    println!("ok: a read-only share refuses writes and stays unchanged");

    fs_privilege(setup, &scratch)
}

/// The guest's root tries to plant privilege in a squashing share and in
/// one that allows host root; the host checks nothing landed with it.
fn fs_privilege(setup: &Setup, scratch: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let shadow = Path::new("/etc/shadow");
    let shadow_before = std::fs::read(shadow).ok().zip(std::fs::metadata(shadow).ok().map(|m| (m.mtime(), m.ctime())));
    let squashed = scratch.join("squashed");
    let host_root = scratch.join("host-root");
    for share in [&squashed, &host_root] {
        std::fs::create_dir_all(share)?;
        let suid = share.join("host-suid");
        std::fs::write(&suid, b"#!/bin/sh\n")?;
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o6755))?;
        std::os::unix::fs::chown(&suid, Some(0), Some(0))?;
    }
    let devices = serde_json::json!({ "fs": [
        { "fs_id": "squashed", "tag": "squashed", "shared_dir": squashed },
        { "fs_id": "hostroot", "tag": "hostroot", "shared_dir": host_root, "allow_host_root": true },
    ] });
    let agent = format!(
        "husk.mount=squashed:/mnt/squashed husk.mount=hostroot:/mnt/hostroot \
         husk.run={PROBE},fs-privilege,/mnt/squashed,/mnt/hostroot"
    );
    // Whether this host's file system takes file capabilities at all (the
    // test host's scratch directory may not): then the guest's setcap in
    // the share allowing host root must land, else fail as the host's does.
    let probe = host_root.join("caps-probe");
    std::fs::write(&probe, b"")?;
    let host_takes_caps = set_capability(&probe);
    std::fs::remove_file(&probe)?;
    let mut vm = Vm::boot(setup, "fs-privilege", &agent, devices)?;
    let code = vm.wait_exit()?;
    let console = vm.console();
    ensure!(code == 0, "fs-privilege failed in the guest (VMM exit {code}):\n{console}");

    for (share, host_root) in [(&squashed, false), (&host_root, true)] {
        let which = if host_root { "allow_host_root share" } else { "squashing share" };
        let mut seen = 0;
        let mut stack = vec![share.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path)?;
            let name = path.strip_prefix(share)?.display().to_string();
            let kind = meta.file_type();
            ensure!(!kind.is_char_device() && !kind.is_block_device(), "{which}: {name} is a device node on the host");
            let mode = meta.permissions().mode();
            ensure!(mode & 0o4000 == 0, "{which}: {name} is setuid on the host ({mode:o})");
            ensure!(meta.is_dir() || mode & 0o2000 == 0, "{which}: {name} is setgid on the host ({mode:o})");
            let host_made = path == *share || name == "host-suid";
            if !host_root && !host_made {
                ensure!(
                    meta.uid() != 0 && meta.gid() != 0,
                    "{which}: {name} is owned by host root ({}:{})",
                    meta.uid(),
                    meta.gid()
                );
            }
            if meta.is_file() {
                if let Some((content, _)) = &shadow_before {
                    ensure!(
                        content.is_empty() || std::fs::read(&path)? != *content,
                        "{which}: {name} holds the host's /etc/shadow"
                    );
                }
            }
            if meta.is_dir() {
                stack.extend(std::fs::read_dir(&path)?.flatten().map(|e| e.path()));
            }
            seen += 1;
        }
        for name in ["null-dev", "sda-dev"] {
            ensure!(std::fs::symlink_metadata(share.join(name)).is_err(), "{which}: {name} exists on the host");
        }
        let tool = std::fs::metadata(share.join("tool"))?;
        let owner = if host_root { (0, 0) } else { (65534, 65534) };
        ensure!((tool.uid(), tool.gid()) == owner, "{which}: tool is {}:{}", tool.uid(), tool.gid());
        let suid = std::fs::metadata(share.join("host-suid"))?;
        ensure!(
            suid.permissions().mode() & 0o7777 == 0o755 && suid.len() > 10,
            "{which}: the guest's write to host-suid left mode {:o}",
            suid.permissions().mode()
        );
        let caps_expected = host_root && host_takes_caps.is_ok();
        ensure!(
            has_xattr(&share.join("tool"), "security.capability")? == caps_expected,
            "{which}: security.capability on tool (expected: {caps_expected})"
        );
        if host_root {
            let errno: i32 = std::fs::read_to_string(share.join("setcap.errno"))?.trim().parse()?;
            match &host_takes_caps {
                Ok(()) => ensure!(errno == 0, "{which}: the guest's setcap failed with errno {errno}"),
                Err(host) => {
                    ensure!(
                        Some(errno) == host.raw_os_error(),
                        "{which}: the guest's setcap got errno {errno}, the host's {host}"
                    );
                    println!(
                        "ok: {which}: the host file system takes no file capabilities ({host}): nor did the guest's"
                    );
                }
            }
        }
        ensure!(
            std::fs::metadata(share.join("sgid-dir"))?.permissions().mode() & 0o7777 == 0o2775,
            "{which}: the setgid directory keeps its bit"
        );
        ensure!(
            std::fs::read_link(share.join("shadow-link"))? == shadow,
            "{which}: shadow-link is a plain symlink on the host"
        );
        println!("ok: {which}: {seen} entries, no setuid file, device node or host-root-owned guest file");
    }
    let shadow_after = std::fs::read(shadow).ok().zip(std::fs::metadata(shadow).ok().map(|m| (m.mtime(), m.ctime())));
    ensure!(shadow_after == shadow_before, "the host's /etc/shadow changed");
    println!("ok: the host's /etc/shadow unchanged and unread through the guest's symlinks");
    Ok(())
}

/// Gives `path` a file capability (CAP_NET_BIND_SERVICE).
fn set_capability(path: &Path) -> std::io::Result<()> {
    let mut value = [0u8; 20];
    value[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    value[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings and a value of the given length.
    let rc =
        unsafe { libc::lsetxattr(c.as_ptr(), c"security.capability".as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `path` has the xattr `name` (not following symlinks).
fn has_xattr(path: &Path, name: &str) -> Result<bool> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // SAFETY: valid C strings; a zero-sized query writes nothing.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    // ENOTSUP: a file system without such xattrs at all.
    if matches!(err.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
        return Ok(false);
    }
    Err(err.into())
}

/// What the guest's fs-check did in `share`, checked on the host.
fn fs_check_seen_on_host(share: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let renamed = std::fs::metadata(share.join("renamed.txt"))?;
    ensure!(
        renamed.len() == 4 && renamed.permissions().mode() & 0o777 == 0o640,
        "rename/truncate/chmod seen on the host"
    );
    ensure!(renamed.nlink() == 2, "the hard link is seen on the host");
    ensure!(std::fs::read_link(share.join("link"))? == Path::new("renamed.txt"), "the symlink is seen on the host");
    ensure!(std::fs::read(share.join("big.bin"))? == pattern(7, 8 << 20), "the 8 MiB file is intact on the host");
    ensure!(!share.join("from-guest.txt").exists(), "the renamed file is gone on the host");
    let xattr =
        Command::new("getfattr").args(["--only-values", "-n", "user.husk"]).arg(share.join("renamed.txt")).output();
    match xattr {
        Ok(out) => ensure!(out.stdout == b"from the guest", "the xattr is seen on the host: {out:?}"),
        Err(_) => {
            // No getfattr on this host: read it with the syscall.
            let path = std::ffi::CString::new(share.join("renamed.txt").as_os_str().as_encoded_bytes())?;
            let mut value = [0u8; 64];
            // SAFETY: valid C strings and a buffer of the given length.
            let n =
                unsafe { libc::getxattr(path.as_ptr(), c"user.husk".as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            ensure!(n == 14 && &value[..14] == b"from the guest", "the xattr is seen on the host");
        }
    }
    let link = share.join("abs-link");
    ensure!(
        std::fs::symlink_metadata(&link)?.file_type().is_symlink()
            && std::fs::read_link(&link)? == Path::new("/etc/hostname"),
        "the guest's absolute symlink is a plain symlink in the share"
    );
    Ok(())
}

/// A TAP on this (test) host, its end addressed 10.200.0.1/24, and a guest
/// at 10.200.0.2 behind virtio-net running a TCP echo on port 7000.
fn boot_net_guest(setup: &Setup, name: &str) -> Result<(Vm, Cleanup)> {
    let tap = format!("hsktap{}", std::process::id() % 10000);
    let cleanup = host_tap(&tap, "10.200.0.1/24")?;
    let devices = serde_json::json!({ "network-interfaces": [{
        "iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:0a:c8:00:02" }] });
    let agent = format!("husk.net=10.200.0.2/24,gw=10.200.0.1 husk.run={PROBE},tcp-echo,7000");
    let mut vm = Vm::boot(setup, name, &agent, devices)?;
    vm.wait_for("tcp echo listening on port 7000")?;
    Ok((vm, cleanup))
}

fn tcp_connect(addr: &str, what: &str) -> Result<std::net::TcpStream> {
    let started = Instant::now();
    loop {
        match std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(5)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(err) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("connecting to {what}: {err}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(err) => bail!("cannot reach {what} over TCP: {err}"),
        }
    }
}

/// Echoes `bytes` of pattern `n` through a stream; returns the seconds taken.
fn echo_through<S: Read + Write + Send + 'static>(mut stream: S, reader: S, n: usize, bytes: usize) -> Result<f64> {
    let data = pattern(n, bytes);
    let expected = data.clone();
    let mut reader = reader;
    let started = Instant::now();
    let checker = std::thread::spawn(move || -> Result<()> {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got)?;
        ensure!(got == expected, "the echo differs from what was sent");
        Ok(())
    });
    stream.write_all(&data)?;
    checker.join().map_err(|_| anyhow::anyhow!("checker panicked"))??;
    Ok(started.elapsed().as_secs_f64())
}

/// The median of `rounds` one-byte round trips, in µs.
fn round_trip_us<S: Read + Write>(stream: &mut S, rounds: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(rounds);
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        let started = Instant::now();
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// The net suite runs in a network namespace it makes: the TAP, the VMM
/// and the TCP client all live there, and nothing touches the test host's
/// own network.
fn net_suite(setup: &Setup) -> Result<()> {
    if std::env::var_os("HUSK_NET_SUITE_INSIDE").is_none() {
        let ns = format!("hsknet{}", std::process::id() % 10000);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let _ns = Cleanup(vec!["netns".into(), "del".into(), ns.clone()]);
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        let mut inner = Command::new("ip");
        inner.args(["netns", "exec", &ns]).arg(std::env::current_exe()?).arg("net");
        inner.arg("--vmm").arg(&setup.vmm).arg("--kernel").arg(&setup.kernel).arg("--initrd").arg(&setup.initrd);
        return run(inner.env("HUSK_NET_SUITE_INSIDE", &ns));
    }
    let (vm, _cleanup) = boot_net_guest(setup, "net")?;
    let stream = tcp_connect("10.200.0.2:7000", "the guest").with_context(|| vm.console())?;
    let secs = echo_through(stream.try_clone()?, stream, 3, 16 << 20)?;
    println!("ok: host to guest TCP echo of 16 MiB through the TAP ({:.1} MiB/s each way)", 16.0 / secs);
    Ok(())
}

fn tcp_echo_server(port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = stream;
            let mut writer = reader.try_clone().expect("clone");
            let _ = std::io::copy(&mut reader, &mut writer);
        });
    }
    Ok(())
}

fn report(name: &str, value: f64, unit: &str) {
    println!("BENCH {}", serde_json::json!({ "name": name, "value": value, "unit": unit }));
}

const ECHO_BYTES: usize = 16 << 20;
const ROUNDS: usize = 200;

fn bench(setup: &Setup) -> Result<()> {
    // vsock: round trips and echo throughput through the hybrid socket.
    let uds = setup.work.join("bench.sock");
    let devices = serde_json::json!({ "vsock": { "guest_cid": 3, "uds_path": uds } });
    let mut vm = Vm::boot(setup, "bench-vsock", &format!("husk.run={PROBE},vsock-echo,5000"), devices)?;
    vm.wait_for("vsock echo listening on port 5000")?;
    report("vsock round trip", round_trip_us(&mut vsock_connect(&uds, 5000)?, ROUNDS)?, "us");
    let stream = vsock_connect(&uds, 5000)?;
    let secs = echo_through(stream.try_clone()?, stream, 1, ECHO_BYTES)?;
    report("vsock echo throughput", ECHO_BYTES as f64 / secs / (1 << 20) as f64, "MiB/s");
    drop(vm);

    // virtio-net through a TAP, beside a veth pair on this host.
    let (vm, _tap) = boot_net_guest(setup, "bench-net")?;
    let mut stream = tcp_connect("10.200.0.2:7000", "the guest").with_context(|| vm.console())?;
    report("virtio-net TCP round trip", round_trip_us(&mut stream, ROUNDS)?, "us");
    let secs = echo_through(stream.try_clone()?, stream, 2, ECHO_BYTES)?;
    report("virtio-net TCP echo throughput", ECHO_BYTES as f64 / secs / (1 << 20) as f64, "MiB/s");
    drop(vm);
    let ns = format!("hskns{}", std::process::id() % 10000);
    let (outer, inner) =
        (format!("hskva{}", std::process::id() % 10000), format!("hskvb{}", std::process::id() % 10000));
    run(Command::new("ip").args(["netns", "add", &ns]))?;
    let _ns = Cleanup(vec!["netns".into(), "del".into(), ns.clone()]);
    run(Command::new("ip").args(["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns]))?;
    let _veth = Cleanup(vec!["link".into(), "del".into(), outer.clone()]);
    run(Command::new("ip").args(["addr", "add", "10.201.0.1/24", "dev", &outer]))?;
    run(Command::new("ip").args(["link", "set", &outer, "up"]))?;
    run(Command::new("ip").args(["-n", &ns, "addr", "add", "10.201.0.2/24", "dev", &inner]))?;
    run(Command::new("ip").args(["-n", &ns, "link", "set", &inner, "up"]))?;
    run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .args(["tcp-echo-server", "7001"])
        .spawn()?;
    let result = (|| -> Result<()> {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = server.try_wait()? {
            bail!("the veth echo server exited at once ({status})");
        }
        let mut stream = tcp_connect("10.201.0.2:7001", "the veth peer")?;
        report("veth TCP round trip", round_trip_us(&mut stream, ROUNDS)?, "us");
        let secs = echo_through(stream.try_clone()?, stream, 2, ECHO_BYTES)?;
        report("veth TCP echo throughput", ECHO_BYTES as f64 / secs / (1 << 20) as f64, "MiB/s");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;

    // virtio-fs: measured in the guest, beside the same operations here.
    let share = setup.work.join("bench-share");
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("big.bin"), pattern(5, 64 << 20))?;
    let files = 300;
    let devices = serde_json::json!({ "fs": [{ "fs_id": "bench", "tag": "bench", "shared_dir": share }] });
    let agent = format!("husk.mount=bench:/mnt/bench husk.run={PROBE},fs-bench,/mnt/bench,{files}");
    let mut vm = Vm::boot(setup, "bench-fs", &agent, devices)?;
    let code = vm.wait_exit()?;
    let console = vm.console();
    ensure!(
        code == 0,
        "fs-bench failed in the guest (VMM exit {code}):
{console}"
    );
    let line = console.lines().find_map(|l| l.find(r#"{"bench""#).map(|i| &l[i..])).context("no fs-bench line")?;
    let measured: serde_json::Value = serde_json::from_str(line.trim())?;
    report("virtio-fs metadata ops", measured["bench"]["fs_metadata_ops_per_s"].as_f64().unwrap_or(0.0), "ops/s");
    report("virtio-fs sequential read", measured["bench"]["fs_seq_read_mib_per_s"].as_f64().unwrap_or(0.0), "MiB/s");
    let started = Instant::now();
    for i in 0..files {
        let path = share.join(format!("meta-{i}"));
        std::fs::write(&path, b"")?;
        std::fs::metadata(&path)?;
        std::fs::remove_file(&path)?;
    }
    report("test host metadata ops (same directory)", (3 * files) as f64 / started.elapsed().as_secs_f64(), "ops/s");
    let started = Instant::now();
    let bytes = std::fs::read(share.join("big.bin"))?.len();
    report(
        "test host sequential read (same file, page cache)",
        bytes as f64 / started.elapsed().as_secs_f64() / (1 << 20) as f64,
        "MiB/s",
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let work = std::env::temp_dir().join(format!("husk-device-suite-{}", std::process::id()));
    let setup = cli.guest.setup("initramfs-test.cpio", work);
    std::fs::create_dir_all(&setup.work)?;
    let result = match cli.suite {
        Suite::Vsock => vsock_suite(&setup),
        Suite::Fs => fs_suite(&setup),
        Suite::Net => net_suite(&setup),
        Suite::Bench => bench(&setup),
        Suite::TcpEchoServer { port } => tcp_echo_server(port),
    };
    let _ = std::fs::remove_dir_all(&setup.work);
    result
}
