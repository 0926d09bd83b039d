//! `husk-device-suite`: the host half of the virtio device tests, run inside
//! the test host (where the project's kernel boots under KVM). Each suite
//! boots husk-vmm with the test initramfs and the device under test, drives
//! the guest's husk-guest-probe from the host side, prints what it checked
//! and exits non-zero on the first failure.
//!
//!   husk-device-suite vsock --vmm PATH --kernel PATH --initrd PATH
//!   husk-device-suite fs    --vmm PATH --kernel PATH --initrd PATH
//!   husk-device-suite net   --vmm PATH --kernel PATH --initrd PATH

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
    #[arg(long, global = true)]
    vmm: Option<PathBuf>,
    #[arg(long, global = true)]
    kernel: Option<PathBuf>,
    #[arg(long, global = true)]
    initrd: Option<PathBuf>,
}

#[derive(Subcommand, Clone, Copy)]
enum Suite {
    Vsock,
    Fs,
    Net,
}

const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet nowatchdog nosoftlockup";
const PROBE: &str = "/bin/husk-guest-probe";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Deterministic bytes (the probe's `pattern`).
fn pattern(stream: usize, len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ stream as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

struct Setup {
    vmm: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    work: PathBuf,
}

/// A running husk-vmm, killed when dropped; its console and log go to files.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn boot(setup: &Setup, name: &str, agent_args: &str, devices: serde_json::Value) -> Result<Vm> {
        let mut config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": setup.kernel,
                "initrd_path": setup.initrd,
                "boot_args": format!("{BOOT_ARGS} {agent_args}"),
            },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
        });
        for (key, value) in devices.as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        let config_path = setup.work.join(format!("{name}.json"));
        std::fs::write(&config_path, config.to_string())?;
        let console = setup.work.join(format!("{name}.console"));
        let log = std::fs::File::create(setup.work.join(format!("{name}.log")))?;
        let child = Command::new(&setup.vmm)
            .args(["--no-api", "--level", "Info", "--config-file"])
            .arg(&config_path)
            .arg("--serial-out")
            .arg(&console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting husk-vmm")?;
        Ok(Vm { child, console })
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for `text` on the guest console.
    fn wait_for(&mut self, text: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.console().contains(text) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the VM ended ({status}) before printing {text:?}:\n{}", self.console());
            }
            ensure!(started.elapsed() < BOOT_TIMEOUT, "no {text:?} within {BOOT_TIMEOUT:?}:\n{}", self.console());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the VM to end by itself; returns the VMM's exit code.
    fn wait_exit(&mut self) -> Result<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            ensure!(
                started.elapsed() < BOOT_TIMEOUT,
                "the VM did not end within {BOOT_TIMEOUT:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Opens a host-initiated vsock stream through the hybrid socket.
fn vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).with_context(|| format!("connecting to {}", uds.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).take(64).read_line(&mut line)?;
    ensure!(line.starts_with("OK ") && line.ends_with('\n'), "handshake answered {line:?}");
    Ok(stream)
}

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
        worker.join().map_err(|_| anyhow::anyhow!("stream {n} panicked"))?.with_context(|| format!("stream {n}"))?;
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
    let listener = UnixListener::bind(format!("{}_6000", uds2.display()))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn;
                let mut writer = reader.try_clone().expect("clone");
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    let devices = serde_json::json!({ "vsock": { "guest_cid": 3, "uds_path": uds2 } });
    let mut vm = Vm::boot(setup, "vsock-to-host", &format!("husk.run={PROBE},vsock-to-host,6000,16,1048576"), devices)?;
    let code = vm.wait_exit()?;
    ensure!(code == 0, "the guest's streams to the host failed (VMM exit {code}):\n{}", vm.console());
    ensure!(vm.console().contains("vsock-to-host ok streams=16"), "{}", vm.console());
    println!("ok: guest to host, 16 streams of 1 MiB each way");
    Ok(())
}

fn fs_suite(setup: &Setup) -> Result<()> {
    let share = setup.work.join("share");
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
    println!("ok: guest file operations seen on the host");

    let ro = setup.work.join("ro-share");
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
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn net_suite(setup: &Setup) -> Result<()> {
    // A TAP on this (test) host, its end addressed 10.200.0.1/24; the guest
    // is 10.200.0.2 behind virtio-net.
    let tap = format!("hsktap{}", std::process::id() % 10000);
    run(Command::new("ip").args(["tuntap", "add", "dev", &tap, "mode", "tap"]))?;
    struct TapGuard(String);
    impl Drop for TapGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _guard = TapGuard(tap.clone());
    run(Command::new("ip").args(["addr", "add", "10.200.0.1/24", "dev", &tap]))?;
    run(Command::new("ip").args(["link", "set", &tap, "up"]))?;
    let devices = serde_json::json!({ "network-interfaces": [{
        "iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:0a:c8:00:02" }] });
    let agent = format!("husk.net=10.200.0.2/24,gw=10.200.0.1 husk.run={PROBE},tcp-echo,7000");
    let mut vm = Vm::boot(setup, "net", &agent, devices)?;
    vm.wait_for("tcp echo listening on port 7000")?;
    let started = Instant::now();
    let stream = loop {
        match std::net::TcpStream::connect_timeout(&"10.200.0.2:7000".parse()?, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(err) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("connecting to the guest: {err}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(err) => bail!("cannot reach the guest over TCP: {err}\n{}", vm.console()),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let bytes = 16 << 20;
    let data = pattern(3, bytes);
    let mut reader = stream.try_clone()?;
    let expected = data.clone();
    let started = Instant::now();
    let checker = std::thread::spawn(move || -> Result<()> {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got)?;
        ensure!(got == expected, "TCP echo differs");
        Ok(())
    });
    (&stream).write_all(&data)?;
    checker.join().map_err(|_| anyhow::anyhow!("checker panicked"))??;
    let secs = started.elapsed().as_secs_f64();
    println!("ok: host to guest TCP echo of 16 MiB through the TAP ({:.1} MiB/s each way)", 16.0 / secs);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let repo = husk_tests::paths::repo_dir();
    let setup = Setup {
        vmm: cli.vmm.unwrap_or_else(|| repo.join("target/debug/husk-vmm")),
        kernel: cli.kernel.unwrap_or_else(|| repo.join("target/husk/vmlinux")),
        initrd: cli.initrd.unwrap_or_else(|| repo.join("target/husk/initramfs-test.cpio")),
        work: std::env::temp_dir().join(format!("husk-device-suite-{}", std::process::id())),
    };
    std::fs::create_dir_all(&setup.work)?;
    let result = match cli.suite {
        Suite::Vsock => vsock_suite(&setup),
        Suite::Fs => fs_suite(&setup),
        Suite::Net => net_suite(&setup),
    };
    let _ = std::fs::remove_dir_all(&setup.work);
    result
}
