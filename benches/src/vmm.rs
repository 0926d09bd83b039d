//! husk-vmm's start-up and memory overhead, beside QEMU's microvm booting
//! the same kernel and initramfs in the same test host.
//!
//! - Process start → API socket accepting, wall and CPU time: here, with no
//!   VM (Firecracker's published bound: 8 CPU ms).
//! - InstanceStart → first vCPU entry and → agent ready, the guest's own
//!   kernel-start → agent-ready (printk clock), and the whole run: in the test
//!   host, which is nested and software-emulated when this machine's KVM
//!   cannot boot Linux: compare the ratios, not the absolute times.
//! - VMM RSS with the guest idle, minus the guest memory it touched
//!   (Firecracker's published bound: 5 MiB).

use std::fmt::Write as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_api::agent_console::ReadyLine;
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::reference_vmm::qemu_microvm;
use husk_tests::testhost::{RunOutput, TestHost};

use crate::stats::{markdown_table, Series};

const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet nowatchdog nosoftlockup";
const TIMEOUT_SECS: u64 = 300;

/// CPU time a process and all its threads have used, from schedstat (ns
/// resolution, unlike the clock ticks of /proc/PID/stat).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn api_socket_startup(vmm: &Path, runs: usize) -> Result<(Series, Series)> {
    let mut wall = Series::new("process start → API socket accepting (wall)", "ms");
    let mut cpu = Series::new("process start → API socket accepting (CPU)", "ms");
    let dir = std::env::temp_dir().join(format!("husk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for run in 0..runs {
        let socket = dir.join(format!("api-{run}.sock"));
        let started = Instant::now();
        let mut child = Command::new(vmm)
            .arg("--api-sock")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting husk-vmm")?;
        while UnixStream::connect(&socket).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("husk-vmm's API socket never accepted a connection");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        wall.push(started.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_time(child.id()).as_secs_f64() * 1e3);
        child.kill()?;
        child.wait()?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok((wall, cpu))
}

/// The number (digits and a decimal point) after `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<f64> {
    let start = text.find(marker)? + marker.len();
    let number: String = text[start..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().ok()
}

/// One boot by tests/testhost/vmm-api-boot.sh in the test host, with its
/// HARDENING mode ("default": seccomp, no jail); a failed boot is an error.
pub fn husk_boot(host: &TestHost, vmm: &Path, after_ready: &str, agent: &str, hardening: &str) -> Result<RunOutput> {
    let env = [
        ("VMM", vmm.to_string_lossy().into_owned()),
        ("KERNEL", artifact("vmlinux")?),
        ("INITRD", artifact("initramfs.cpio")?),
        ("BOOT_ARGS", format!("{BOOT_ARGS} {agent}")),
        ("VCPUS", "1".into()),
        ("MEM_MIB", "256".into()),
        ("AFTER_READY", after_ready.into()),
        ("HARDENING", hardening.into()),
    ];
    let request = RunRequest {
        argv: vec![paths::repo_dir().join("tests/testhost/vmm-api-boot.sh").to_string_lossy().into_owned()],
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        timeout_secs: TIMEOUT_SECS,
        ..Default::default()
    };
    let output = host.run(&request)?;
    if !output.report.success() {
        bail!("husk-vmm boot ({hardening}) failed ({:?}):\n{}", output.report, output.stdout_text());
    }
    Ok(output)
}

fn artifact(name: &str) -> Result<String> {
    Ok(paths::artifact(name).map_err(anyhow::Error::msg)?.to_string_lossy().into_owned())
}

fn printk_ready_ms(output: &RunOutput) -> Result<f64> {
    let ready = output.stdout_text().lines().find_map(ReadyLine::parse).context("no ready line")?;
    Ok(ready.printk.context("no printk time")?.as_secs_f64() * 1e3)
}

pub fn run(out: &Path, runs: usize, socket_runs: usize) -> Result<()> {
    let vmm = crate::release_vmm()?;
    eprintln!("husk-bench vmm: {socket_runs} API socket start-ups here");
    let (socket_wall, socket_cpu) = api_socket_startup(&vmm, socket_runs)?;

    let runner = paths::repo_dir().join("target/debug/husk-testhost");
    let host = TestHost::shared(&runner)?;
    let info = host.info()?;
    eprintln!("husk-bench vmm: test host {:?}, kernel {}, kvm {}", host.mode(), info.kernel, info.kvm);

    let mut first_entry = Series::new("husk-vmm: InstanceStart → first vCPU entry", "ms");
    let mut boot_timer = Series::new("husk-vmm: InstanceStart → agent ready (boot timer)", "ms");
    let mut husk_printk = Series::new("husk-vmm: guest kernel start → agent ready (printk)", "ms");
    let mut qemu_printk = Series::new("QEMU microvm: guest kernel start → agent ready (printk)", "ms");
    let mut husk_run = Series::new("husk-vmm: whole run (process start, API calls, boot, power-off)", "ms");
    let mut qemu_run = Series::new("QEMU microvm: whole run (process start, boot, reset)", "ms");
    let qemu_request = qemu_microvm(
        Path::new(&artifact("vmlinux")?),
        Path::new(&artifact("initramfs.cpio")?),
        "husk.ready_action=poweroff",
        TIMEOUT_SECS,
    );
    for run in 1..=runs {
        eprintln!("husk-bench vmm: boot {run}/{runs} (husk-vmm, then QEMU microvm)");
        let husk = husk_boot(&host, &vmm, "wait", "husk.ready_action=poweroff", "default")?;
        let text = husk.stdout_text();
        first_entry.push(number_after(&text, "first vCPU entry").context("no first-entry log")? / 1e3);
        boot_timer.push(number_after(&text, "Guest-boot-time =").context("no boot-timer log")? / 1e3);
        husk_printk.push(printk_ready_ms(&husk)?);
        husk_run.push(husk.elapsed.as_secs_f64() * 1e3);

        let qemu = host.run(&qemu_request)?;
        if !qemu.report.success() {
            bail!("QEMU boot failed ({:?}):\n{}", qemu.report, qemu.stderr_text());
        }
        qemu_printk.push(printk_ready_ms(&qemu)?);
        qemu_run.push(qemu.elapsed.as_secs_f64() * 1e3);
    }

    let mut overhead = Series::new("husk-vmm RSS with the guest idle, minus guest memory touched", "MiB");
    let mut guest_touched = Series::new("guest memory touched by an idle guest (256 MiB VM)", "MiB");
    let rss_runs = runs.clamp(1, 5);
    for run in 1..=rss_runs {
        eprintln!("husk-bench vmm: idle memory {run}/{rss_runs}");
        let output = husk_boot(&host, &vmm, "rss", "husk.ready_action=wait", "default")?;
        let text = output.stdout_text();
        let rss = number_after(&text, "rss_kib=").context("no rss line")?;
        let guest = number_after(&text, "guest_rss_kib=").context("no rss line")?;
        overhead.push((rss - guest) / 1024.0);
        guest_touched.push(guest / 1024.0);
    }

    let series = [
        &socket_wall,
        &socket_cpu,
        &first_entry,
        &boot_timer,
        &husk_printk,
        &qemu_printk,
        &husk_run,
        &qemu_run,
        &overhead,
        &guest_touched,
    ];
    let mut table = String::new();
    writeln!(table, "# husk-vmm start-up and overhead\n")?;
    writeln!(
        table,
        "Test host: {:?} (kernel {}, KVM {}); local KVM: {}. Boots alternate between the VMMs; \
         times inside a nested, software-emulated host are not comparable to hardware: read the ratios.\n",
        host.mode(),
        info.kernel,
        info.kvm,
        husk_tests::kvm::KvmFlavour::detect().name()
    )?;
    table.push_str(&markdown_table(series, 2));
    writeln!(
        table,
        "\nRatios (median): guest kernel start → ready, husk-vmm / QEMU microvm = {:.2}; whole run, husk-vmm / QEMU microvm = {:.2}.",
        husk_printk.median() / qemu_printk.median(),
        husk_run.median() / qemu_run.median()
    )?;
    std::fs::write(out.join("vmm-startup.md"), &table)?;
    std::fs::write(out.join("vmm-startup.json"), serde_json::to_string_pretty(&series)?)?;
    print!("{table}");
    eprintln!("husk-bench vmm: wrote {}", out.join("vmm-startup.md").display());
    Ok(())
}
