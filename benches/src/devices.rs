//! The virtio devices' speed in real microVMs: husk-device-suite's `bench`
//! run in the test host a few times — vsock and virtio-net round trips and
//! echo throughput, TCP over a veth pair on the same host beside them, and
//! virtio-fs metadata operations and sequential reads beside the same
//! operations on the test host itself.
//!
//! QEMU with virtiofsd would be the natural reference for virtio-fs, but no
//! virtiofsd package installs from this machine's Debian archive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, Series};

pub fn run(out: &Path, runs: usize) -> Result<()> {
    let vmm = std::env::var_os("HUSK_VMM_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| paths::repo_dir().join("target/release/husk-vmm"));
    if !vmm.is_file() {
        bail!("{} is missing: `cargo build --release -p husk-vmm` (benches/run.sh does)", vmm.display());
    }
    let suite = paths::repo_dir().join("target/debug/husk-device-suite");
    let artifact = |name: &str| -> Result<String> {
        Ok(paths::artifact(name).map_err(anyhow::Error::msg)?.to_string_lossy().into_owned())
    };
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let info = host.info()?;
    let request = RunRequest {
        argv: vec![
            suite.to_string_lossy().into_owned(),
            "bench".into(),
            "--vmm".into(),
            vmm.to_string_lossy().into_owned(),
            "--kernel".into(),
            artifact("vmlinux")?,
            "--initrd".into(),
            artifact("initramfs-test.cpio")?,
        ],
        timeout_secs: 1200,
        ..Default::default()
    };
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut order = Vec::new();
    for run in 1..=runs {
        eprintln!("husk-bench devices: run {run}/{runs}");
        let output = host.run(&request)?;
        if !output.report.success() {
            bail!("the device bench failed ({:?}):\n{}\n{}", output.report, output.stdout_text(), output.stderr_text());
        }
        for line in output.stdout_text().lines().filter_map(|l| l.strip_prefix("BENCH ")) {
            let sample: serde_json::Value = serde_json::from_str(line).context("a BENCH line")?;
            let name = sample["name"].as_str().unwrap_or_default().to_owned();
            let unit = sample["unit"].as_str().unwrap_or_default();
            if !series.contains_key(&name) {
                order.push(name.clone());
            }
            series
                .entry(name.clone())
                .or_insert_with(|| Series::new(&name, unit))
                .push(sample["value"].as_f64().unwrap_or(f64::NAN));
        }
    }
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
    table.push_str(&markdown_table(order.iter().map(|n| &series[n]), 1));
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
    let all: Vec<&Series> = order.iter().map(|n| &series[n]).collect();
    std::fs::write(out.join("devices.json"), serde_json::to_string_pretty(&all)?)?;
    print!("{table}");
    Ok(())
}
