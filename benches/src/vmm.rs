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
//!   (Firecracker's published bound: 5 MiB): `husk-bench vmm` only; the
//!   suite's density run measures it beside every container VM.

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
    let mut wall = Series::of("process start → API socket accepting, here", "husk-vmm, wall", "ms");
    let mut cpu = Series::of("process start → API socket accepting, here", "husk-vmm, CPU", "ms");
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

/// What [`measure`] found, in table order.
pub struct VmmStartup {
    pub series: Vec<Series>,
    /// Guest kernel start → ready, husk-vmm / QEMU microvm (medians).
    pub printk_ratio: f64,
    /// The whole run, husk-vmm / QEMU microvm (medians).
    pub run_ratio: f64,
    /// Host CPU time over the whole run, husk-vmm / QEMU microvm (medians).
    pub cpu_ratio: f64,
}

/// The group of the VMM comparison's host-CPU series.
pub const CPU_GROUP: &str = "host CPU time per boot (process start → guest powered off)";

/// `request` run under `sh`, which prints the CPU time (user+sys, clock
/// ticks) the program used once it has exited: `cpu_ticks=N hz=HZ`.
fn with_cpu_time(mut request: RunRequest) -> RunRequest {
    let script = r#""$@"; status=$?; echo "cpu_ticks=$(awk '{ print $16 + $17 }' /proc/$$/stat) hz=$(getconf CLK_TCK)"; exit $status"#;
    let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned(), "sh".to_owned()];
    argv.append(&mut request.argv);
    request.argv = argv;
    request
}

/// Measures husk-vmm's start-up here and, in `host`, its boots beside QEMU
/// microvm's, alternating; then, in `idle_runs` more boots, its memory with
/// the guest idle. The suite passes 0: its density run measures the VMM's
/// overhead beside every container VM instead, and the boots cost minutes.
pub fn measure(host: &TestHost, runs: usize, socket_runs: usize, idle_runs: usize) -> Result<VmmStartup> {
    let vmm = crate::release_vmm()?;
    let local = husk_tests::kvm::KvmFlavour::detect().name();
    eprintln!("husk-bench vmm: {socket_runs} API socket start-ups here ({local}, no VM)");
    let (socket_wall, socket_cpu) = api_socket_startup(&vmm, socket_runs)?;

    let husk = "husk-vmm";
    let qemu = "QEMU microvm";
    let mut first_entry = Series::of("InstanceStart → first vCPU entry", husk, "ms");
    let mut boot_timer = Series::of("InstanceStart → agent ready (boot timer)", husk, "ms");
    let printk = "guest kernel start → agent ready (printk)";
    let mut husk_printk = Series::of(printk, husk, "ms");
    let mut qemu_printk = Series::of(printk, qemu, "ms");
    let whole = "whole run: process start → guest powered off";
    let mut husk_run = Series::of(whole, husk, "ms");
    let mut qemu_run = Series::of(whole, qemu, "ms");
    let mut husk_cpu = Series::of(CPU_GROUP, husk, "ms");
    let mut qemu_cpu = Series::of(CPU_GROUP, qemu, "ms");
    let qemu_request = with_cpu_time(qemu_microvm(
        Path::new(&artifact("vmlinux")?),
        Path::new(&artifact("initramfs.cpio")?),
        "husk.ready_action=poweroff",
        TIMEOUT_SECS,
    ));
    let started = Instant::now();
    for run in 1..=runs {
        eprintln!(
            "husk-bench vmm: boot {run}/{runs} (husk-vmm, then QEMU microvm){}",
            crate::stats::eta(started, run - 1, runs)
        );
        let output = husk_boot(host, &vmm, "wait", "husk.ready_action=poweroff", "default")?;
        let text = output.stdout_text();
        first_entry.push(number_after(&text, "first vCPU entry").context("no first-entry log")? / 1e3);
        boot_timer.push(number_after(&text, "Guest-boot-time =").context("no boot-timer log")? / 1e3);
        husk_printk.push(printk_ready_ms(&output)?);
        husk_run.push(output.elapsed.as_secs_f64() * 1e3);
        husk_cpu.push(number_after(&text, "vmm_cpu_ms=").context("no vmm_cpu_ms line")?);

        let output = host.run(&qemu_request)?;
        if !output.report.success() {
            bail!("QEMU boot failed ({:?}):\n{}", output.report, output.stderr_text());
        }
        let text = output.stdout_text();
        let ticks = number_after(&text, "cpu_ticks=").context("no cpu_ticks line after QEMU")?;
        let hz = number_after(&text, "hz=").context("no hz after QEMU")?;
        qemu_printk.push(printk_ready_ms(&output)?);
        qemu_run.push(output.elapsed.as_secs_f64() * 1e3);
        qemu_cpu.push(ticks * 1e3 / hz);
    }

    let mut overhead = Series::of("husk-vmm RSS with the guest idle, minus guest memory touched", husk, "MiB");
    let mut guest_touched = Series::of("guest memory touched by an idle guest (256 MiB VM)", husk, "MiB");
    for run in 1..=idle_runs {
        eprintln!("husk-bench vmm: idle memory {run}/{idle_runs}");
        let output = husk_boot(host, &vmm, "rss", "husk.ready_action=wait", "default")?;
        let text = output.stdout_text();
        let rss = number_after(&text, "rss_kib=").context("no rss line")?;
        let guest = number_after(&text, "guest_rss_kib=").context("no rss line")?;
        overhead.push((rss - guest) / 1024.0);
        guest_touched.push(guest / 1024.0);
    }
    let printk_ratio = husk_printk.median() / qemu_printk.median();
    let run_ratio = husk_run.median() / qemu_run.median();
    let cpu_ratio = husk_cpu.median() / qemu_cpu.median();
    let mut series = vec![
        socket_wall,
        socket_cpu,
        first_entry,
        boot_timer,
        husk_printk,
        qemu_printk,
        husk_run,
        qemu_run,
        husk_cpu,
        qemu_cpu,
    ];
    if idle_runs > 0 {
        series.extend([overhead, guest_touched]);
    }
    Ok(VmmStartup { series, printk_ratio, run_ratio, cpu_ratio })
}

impl VmmStartup {
    /// The markdown section: how it was measured, the table, the ratios.
    pub fn markdown(&self, host: &TestHost) -> Result<String> {
        let info = host.info()?;
        let mut table = String::new();
        writeln!(
            table,
            "Process start → API ready is measured here ({}, no VM). The boots run in the test host ({:?}, kernel \
             {}, KVM {}), alternating between husk-vmm (through its API socket, as Firecracker's guide does with \
             curl) and QEMU's microvm machine booting the same kernel and initramfs (1 vCPU, 256 MiB); in a \
             nested, software-emulated host the absolute times are far above hardware: read the ratios.\n",
            husk_tests::kvm::KvmFlavour::detect().name(),
            host.mode(),
            info.kernel,
            info.kvm,
        )?;
        table.push_str(&markdown_table(&self.series, 2));
        writeln!(
            table,
            "\nRatios (medians), husk-vmm / QEMU microvm: guest kernel start → ready {:.2}; whole run {:.2}; host CPU \
             per boot {:.2}.",
            self.printk_ratio, self.run_ratio, self.cpu_ratio
        )?;
        Ok(table)
    }
}

pub fn run(out: &Path, runs: usize, socket_runs: usize) -> Result<()> {
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let measured = measure(&host, runs, socket_runs, runs.clamp(1, 5))?;
    let table = format!("# husk-vmm start-up and overhead\n\n{}", measured.markdown(&host)?);
    std::fs::write(out.join("vmm-startup.md"), &table)?;
    std::fs::write(out.join("vmm-startup.json"), serde_json::to_string_pretty(&measured.series)?)?;
    print!("{table}");
    eprintln!("husk-bench vmm: wrote {}", out.join("vmm-startup.md").display());
    Ok(())
}
