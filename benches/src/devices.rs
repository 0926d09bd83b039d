//! The virtio devices' speed in real microVMs: husk-device-suite's `bench`
//! run in the test host a few times — vsock and virtio-net round trips and
//! echo throughput, TCP over a veth pair on the same host beside them, and
//! virtio-fs metadata operations and sequential reads beside the same
//! operations on the test host itself.
//!
//! QEMU with virtiofsd would be the natural reference for virtio-fs, but no
//! virtiofsd package installs from this machine's Debian archive.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, BenchLines};

pub fn run(out: &Path, runs: usize) -> Result<()> {
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let info = host.info()?;
    let request = RunRequest {
        argv: crate::suite_argv("husk-device-suite", &["bench"], "initramfs-test.cpio")?,
        timeout_secs: 1200,
        ..Default::default()
    };
    let mut lines = BenchLines::default();
    for run in 1..=runs {
        eprintln!("husk-bench devices: run {run}/{runs}");
        crate::add_suite_run(&mut lines, &host, &request, "device")?;
    }
    let series = &lines.series;
    let mut table = String::new();
    writeln!(table, "# virtio devices in a husk microVM\n")?;
    writeln!(
        table,
        "Test host: {:?} (kernel {}, KVM {}); {runs} runs of each measurement, medians. Inside a nested, \
         software-emulated host absolute figures are far below hardware: compare rows measured in the same run.\n",
        host.mode(),
        info.kernel,
        info.kvm
    )?;
    table.push_str(&markdown_table(lines.ordered(), 1));
    let ratio = |a: &str, b: &str| series.get(a).zip(series.get(b)).map(|(a, b)| a.median() / b.median());
    if let Some(r) = ratio("virtio-net TCP echo throughput", "veth TCP echo throughput") {
        writeln!(table, "\nvirtio-net TCP echo throughput / veth: {r:.2}.")?;
    }
    if let Some(r) = ratio("virtio-fs metadata ops", "test host metadata ops (same directory)") {
        writeln!(table, "virtio-fs metadata ops / the test host's own: {r:.2}.")?;
    }
    writeln!(
        table,
        "\nQEMU + virtiofsd, the intended virtio-fs reference, is not measured: no virtiofsd package installs here."
    )?;
    std::fs::write(out.join("devices.md"), &table)?;
    std::fs::write(out.join("devices.json"), serde_json::to_string_pretty(&lines.ordered())?)?;
    print!("{table}");
    Ok(())
}
