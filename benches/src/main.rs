//! `husk-bench`: husk's benchmarks. Each run writes a markdown table and the
//! raw samples as JSON under `benches/results/<date>/`.
//!
//!   husk-bench suite               everything issue #8 asks for in one go (the
//!                                  default of benches/run.sh): start-up beside
//!                                  QEMU microvm, crun and runc, host CPU per start,
//!                                  density; summary.md, samples.csv/json, PNG plots
//!   husk-bench vmm [--runs N]      husk-vmm start-up, boot and memory overhead,
//!                                  beside QEMU's microvm on the same guest
//!   husk-bench devices [--runs N]  vsock, virtio-net and virtio-fs speed in a
//!                                  microVM, beside veth and the host's own file system
//!   husk-bench containers [--runs N]  OCI containers in a microVM: create → first
//!                                  instruction, exec round trip, stdout throughput
//!   husk-bench engines [--rounds N]  podman run and `<runtime> run` with husk, crun, runc
//!   husk-bench hardening [--runs N]  start-up cost of seccomp and the jail, on and off

mod containers;
mod density;
mod devices;
mod engines;
mod hardening;
mod plot;
mod report;
mod stats;
mod suite;
mod vmm;

use std::path::PathBuf;

use anyhow::{Context, Result};
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::TestHost;

use crate::stats::BenchLines;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "husk's startup and density benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Where results go (default: benches/results/<UTC date>).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole suite: start-up (husk-vmm beside QEMU microvm, `run` and
    /// `podman run` with husk beside crun and runc, host CPU per start) and
    /// density, into one summary.md with every sample and PNG plots.
    Suite {
        /// Boots per VMM and rounds of the engine comparison (each system
        /// measured alternately).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Local husk-vmm start-ups to its API socket.
        #[arg(long, default_value_t = 40)]
        socket_runs: usize,
        /// Most idle containers the density run starts per runtime.
        #[arg(long, default_value_t = 12)]
        density_count: usize,
        /// MemAvailable each runtime's containers may take, MiB.
        #[arg(long, default_value_t = 2048)]
        density_budget_mib: u64,
    },
    /// husk-vmm: process start to API socket, InstanceStart to first vCPU
    /// entry and to agent ready, VMM memory overhead; QEMU microvm beside it.
    Vmm {
        /// Samples per measurement (boots alternate between the VMMs).
        #[arg(long, default_value_t = 11)]
        runs: usize,
        /// Samples of the local API-socket start-up.
        #[arg(long, default_value_t = 30)]
        socket_runs: usize,
    },
    /// virtio devices: vsock and net round trips and throughput (beside a
    /// veth pair), virtio-fs metadata ops/s and sequential reads.
    Devices {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// OCI containers run by the guest agent: create → the container's
    /// first instruction, exec round trip, stdout throughput.
    Containers {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// `podman run --rm … /bin/true` and `run` of a bundle with husk, crun
    /// and runc in the test host.
    Engines {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// husk-vmm start-up with seccomp and the jail on and off: API start-up
    /// here, InstanceStart → agent ready in the test host.
    Hardening {
        /// Boots per mode in the test host.
        #[arg(long, default_value_t = 8)]
        runs: usize,
        /// Local API start-ups per mode.
        #[arg(long, default_value_t = 30)]
        socket_runs: usize,
    },
    /// Idle containers started one after another with husk, then crun, in
    /// the test host, until a count or a memory budget: host memory per
    /// container (PSS by process, guest touched, VMM overhead) and start
    /// time as the host fills.
    Density {
        /// husk containers at most.
        #[arg(long, default_value_t = 16)]
        husk_count: usize,
        /// crun containers at most.
        #[arg(long, default_value_t = 16)]
        crun_count: usize,
        /// MemAvailable each runtime's containers may take, MiB.
        #[arg(long, default_value_t = 2048)]
        budget_mib: u64,
    },
}

/// The command line of a test-host suite (`target/debug/SUITE ARGS…`)
/// booting the release husk-vmm with the project's vmlinux and `initrd`.
fn suite_argv(suite: &str, args: &[&str], initrd: &str) -> Result<Vec<String>> {
    let artifact = |name: &str| -> Result<String> {
        Ok(husk_tests::paths::artifact(name).map_err(anyhow::Error::msg)?.to_string_lossy().into_owned())
    };
    let mut argv = vec![husk_tests::paths::repo_dir().join("target/debug").join(suite).to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend([
        "--vmm".into(),
        release_vmm()?.to_string_lossy().into_owned(),
        "--kernel".into(),
        artifact("vmlinux")?,
        "--initrd".into(),
        artifact(initrd)?,
    ]);
    Ok(argv)
}

/// Runs a suite's bench in the test host and adds its `BENCH` lines;
/// its stderr (the suite's progress) is passed on live, and a failed
/// run is an error carrying its output.
fn add_suite_run(lines: &mut BenchLines, host: &TestHost, request: &RunRequest, what: &str) -> Result<()> {
    // The suite's stderr is its progress: pass it on as it arrives.
    let progress = |frame: &husk_tests::protocol::Frame| {
        if let husk_tests::protocol::Frame::Stderr(data) = frame {
            let mut stderr = std::io::stderr().lock();
            let _ = std::io::Write::write_all(&mut stderr, data);
        }
    };
    let output = host.run_streaming(request, &progress)?;
    if !output.report.success() {
        anyhow::bail!(
            "the {what} bench failed ({:?}):\n{}\n{}",
            output.report,
            output.stdout_text(),
            output.stderr_text()
        );
    }
    lines.add_output(&output.stdout_text()).context("a BENCH line")
}

/// The release husk-vmm the benchmarks measure: `HUSK_VMM_BIN`, else
/// target/release/husk-vmm.
fn release_vmm() -> Result<PathBuf> {
    let vmm = std::env::var_os("HUSK_VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| husk_tests::paths::repo_dir().join("target/release/husk-vmm"));
    if !vmm.is_file() {
        anyhow::bail!("{} is missing: `cargo build --release -p husk-vmm` (benches/run.sh does)", vmm.display());
    }
    Ok(vmm)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = cli.out.unwrap_or_else(|| husk_tests::paths::repo_dir().join("benches/results").join(stats::utc_date()));
    std::fs::create_dir_all(&out)?;
    match cli.command {
        Cmd::Suite { runs, socket_runs, density_count, density_budget_mib } => {
            suite::run(&out, &suite::SuiteOptions { runs, socket_runs, density_count, density_budget_mib })
        }
        Cmd::Vmm { runs, socket_runs } => vmm::run(&out, runs, socket_runs),
        Cmd::Devices { runs } => devices::run(&out, runs),
        Cmd::Containers { runs } => containers::run(&out, runs),
        Cmd::Engines { rounds } => engines::run(&out, rounds),
        Cmd::Hardening { runs, socket_runs } => hardening::run(&out, runs, socket_runs),
        Cmd::Density { husk_count, crun_count, budget_mib } => {
            density::run(&out, husk_count, crun_count, budget_mib).map(|_| ())
        }
    }
}
