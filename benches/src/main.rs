//! `husk-bench`: husk's benchmarks. Each run writes a markdown table and the
//! raw samples as JSON under `benches/results/<date>/`.
//!
//!   husk-bench vmm [--runs N]      husk-vmm start-up, boot and memory overhead,
//!                                  beside QEMU's microvm on the same guest
//!   husk-bench devices [--runs N]  vsock, virtio-net and virtio-fs speed in a
//!                                  microVM, beside veth and the host's own file system

mod devices;
mod stats;
mod vmm;

use std::path::PathBuf;

use anyhow::Result;
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = cli.out.unwrap_or_else(|| husk_tests::paths::repo_dir().join("benches/results").join(stats::utc_date()));
    std::fs::create_dir_all(&out)?;
    match cli.command {
        Cmd::Vmm { runs, socket_runs } => vmm::run(&out, runs, socket_runs),
        Cmd::Devices { runs } => devices::run(&out, runs),
    }
}
