//! The guest agent running OCI containers in a real microVM:
//! husk-container-suite's `bench` in the test host. Per sample: create →
//! the container's first instruction (on the guest's clock, against the
//! agent's receipt of the create request), create → the first stdout byte
//! at the host, an exec of `true` from request to exit status, the agent's
//! ping round trip beside them (the protocol's floor), and stdout
//! throughput.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, BenchLines};

pub fn run(out: &Path, runs: usize) -> Result<()> {
    let image = paths::artifact("images/busybox/rootfs").map_err(anyhow::Error::msg)?;
    let probe = paths::guest_probe().map_err(anyhow::Error::msg)?;
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let info = host.info()?;
    let request = RunRequest {
        argv: crate::suite_argv(
            "husk-container-suite",
            &[
                "bench",
                "--runs",
                &runs.to_string(),
                "--rootfs",
                &image.to_string_lossy(),
                "--probe",
                &probe.to_string_lossy(),
            ],
            "initramfs.cpio",
        )?,
        timeout_secs: 1800,
        ..Default::default()
    };
    eprintln!("husk-bench containers: {runs} rounds in one microVM");
    let mut lines = BenchLines::default();
    crate::add_suite_run(&mut lines, &host, &request, "container")?;
    let mut table = String::new();
    writeln!(table, "# OCI containers run by the guest agent\n")?;
    writeln!(
        table,
        "Test host: {:?} (kernel {}, KVM {}); one microVM (1 vCPU, 512 MiB, the busybox image over virtio-fs), \
         {runs} rounds, medians. Inside a nested, software-emulated host absolute figures are far below hardware: \
         compare rows measured in the same run.\n",
        host.mode(),
        info.kernel,
        info.kvm
    )?;
    table.push_str(&markdown_table(lines.ordered(), 1));
    let series = &lines.series;
    let ratio = |a: &str, b: &str| series.get(a).zip(series.get(b)).map(|(a, b)| a.median() / b.median());
    if let Some(r) = ratio("exec of true: request → exit status at the host", "agent ping round trip") {
        writeln!(table, "\nexec round trip / agent ping round trip: {r:.1}.")?;
    }
    std::fs::write(out.join("containers.md"), &table)?;
    std::fs::write(out.join("containers.json"), serde_json::to_string_pretty(&lines.ordered())?)?;
    print!("{table}");
    Ok(())
}
