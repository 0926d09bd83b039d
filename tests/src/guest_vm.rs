//! A husk-vmm guest booted from a config file, for the suites that run in
//! the test host: its console and VMM log in files, killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet nowatchdog nosoftlockup";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The `--vmm`, `--kernel` and `--initrd` options of the suites.
#[derive(clap::Args, Clone, Debug)]
pub struct GuestArgs {
    #[arg(long, global = true)]
    pub vmm: Option<PathBuf>,
    #[arg(long, global = true)]
    pub kernel: Option<PathBuf>,
    #[arg(long, global = true)]
    pub initrd: Option<PathBuf>,
}

impl GuestArgs {
    /// A setup with these options, defaulting to the repository's debug
    /// husk-vmm, its vmlinux and `initrd` under target/husk.
    pub fn setup(self, initrd: &str, work: PathBuf) -> Setup {
        let repo = crate::paths::repo_dir();
        Setup {
            vmm: self.vmm.unwrap_or_else(|| repo.join("target/debug/husk-vmm")),
            kernel: self.kernel.unwrap_or_else(|| repo.join("target/husk/vmlinux")),
            initrd: self.initrd.unwrap_or_else(|| repo.join("target/husk").join(initrd)),
            work,
        }
    }
}

pub struct Setup {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub work: PathBuf,
}

/// A running husk-vmm, killed when dropped; its console and log go to files.
pub struct Vm {
    pub child: Child,
    pub console: PathBuf,
    /// The VMM's own log (its stderr).
    pub log: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    pub fn boot(setup: &Setup, name: &str, agent_args: &str, devices: serde_json::Value) -> Result<Vm> {
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
        let log_path = setup.work.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&setup.vmm)
            // HUSK_VMM_LEVEL=Debug shows each vsock connection's end in the log.
            .args([
                "--no-api",
                "--level",
                &std::env::var("HUSK_VMM_LEVEL").unwrap_or_else(|_| "Info".into()),
                "--config-file",
            ])
            .arg(&config_path)
            .arg("--serial-out")
            .arg(&console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting husk-vmm")?;
        Ok(Vm { child, console, log: log_path })
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// For an error from the middle of a test: whether the VMM still runs
    /// (or how it ended), the last lines of its log and of the console.
    pub fn report(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "the VMM is still running".to_owned(),
            Ok(Some(status)) => format!("the VMM ended ({status})"),
            Err(err) => format!("the VMM's state is unknown ({err})"),
        };
        let tail = |path: &Path| crate::file_tail(path, 30);
        format!(
            "{state}\n--- its log (last lines) ---\n{}\n--- the console (last lines) ---\n{}",
            tail(&self.log),
            tail(&self.console)
        )
    }

    /// Waits for `text` on the guest console.
    pub fn wait_for(&mut self, text: &str) -> Result<()> {
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
    pub fn wait_exit(&mut self) -> Result<i32> {
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
pub fn vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).with_context(|| format!("connecting to {}", uds.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).take(64).read_line(&mut line)?;
    ensure!(line.starts_with("OK ") && line.ends_with('\n'), "handshake answered {line:?}");
    Ok(stream)
}

/// Runs a command that must succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// Deletes a network device (TAP, veth) or namespace when dropped: the
/// `ip` arguments that do it.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = Command::new("ip").args(&args).status();
    }
}

/// A TAP on this (test) host with `host_cidr` on its end, up, deleted when
/// the returned guard drops.
pub fn host_tap(name: &str, host_cidr: &str) -> Result<Cleanup> {
    run(Command::new("ip").args(["tuntap", "add", "dev", name, "mode", "tap"]))?;
    let cleanup = Cleanup(vec!["link".into(), "del".into(), name.into()]);
    run(Command::new("ip").args(["addr", "add", host_cidr, "dev", name]))?;
    run(Command::new("ip").args(["link", "set", name, "up"]))?;
    Ok(cleanup)
}
