//! podman and the OCI runtimes side by side: husk-engine-suite's `bench` in
//! the test host. Per round, for each runtime in turn (husk, crun, runc):
//! `podman run --rm busybox /bin/true`, and `<runtime> run --bundle` of a
//! plain bundle running /bin/true. husk is the release build, with the
//! release husk-vmm beside it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use husk_tests::paths;
use husk_tests::protocol::RunRequest;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, BenchLines, Series};

/// Runs the engine suite's bench in `host`: `rounds` rounds of husk, crun
/// and runc, interleaved within each round.
pub fn measure(host: &TestHost, rounds: usize) -> Result<BenchLines> {
    let repo = paths::repo_dir();
    let husk = repo.join("target/release/husk");
    if !husk.is_file() || !repo.join("target/release/husk-vmm").is_file() {
        bail!("build the release husk and husk-vmm first (benches/run.sh does)");
    }
    let suite = repo.join("target/debug/husk-engine-suite").to_string_lossy().into_owned();
    let husk = husk.to_string_lossy().into_owned();
    let argv: Vec<String> = [
        suite.as_str(),
        "bench",
        "--rounds",
        &rounds.to_string(),
        "--husk",
        &husk,
        "--runtime",
        "husk",
        "--runtime",
        "crun",
        "--runtime",
        "runc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eprintln!("husk-bench engines: {rounds} rounds of husk, crun and runc, interleaved");
    let mut lines = BenchLines::default();
    let request = RunRequest { argv, timeout_secs: 3600, ..Default::default() };
    crate::add_suite_run(&mut lines, host, &request, "engine")?;
    Ok(lines)
}

/// The ratio of husk's median to `baseline`'s on `group`.
pub fn ratio(lines: &BenchLines, group: &str, baseline: &str) -> Option<f64> {
    ratio_of(&lines.ordered(), group, baseline)
}

fn ratio_of(series: &[&Series], group: &str, baseline: &str) -> Option<f64> {
    let find = |system: &str| series.iter().find(|s| s.group == group && s.system == system);
    let ratio = find("husk")?.median() / find(baseline)?.median();
    ratio.is_finite().then_some(ratio)
}

/// The markdown section for `series` (some of the bench's): how it was
/// measured, the table, the ratios to crun and runc.
pub fn markdown_of(series: &[&Series], host: &TestHost, rounds: usize) -> Result<String> {
    let info = host.info()?;
    let mut table = String::new();
    writeln!(
        table,
        "Test host: {:?} (kernel {}, KVM {}); podman + conmon with the overlay driver, no network, the busybox \
         image; husk boots one microVM per container (release husk-vmm, 1 vCPU, 512 MiB). `run` is the runtime's \
         own `run` of a bundle: create → start → exit → delete. {rounds} rounds, runtimes interleaved within each \
         round. The test host is software-emulated (QEMU TCG with nested SVM): absolute times are far above \
         hardware, compare ratios from this one run.\n",
        host.mode(),
        info.kernel,
        info.kvm
    )?;
    table.push_str(&markdown_table(series.iter().copied(), 0));
    writeln!(table)?;
    for group in crate::stats::groups(series) {
        for baseline in ["crun", "runc"] {
            if let Some(r) = ratio_of(series, group, baseline) {
                writeln!(table, "- {group}: husk / {baseline} = {r:.2}")?;
            }
        }
    }
    Ok(table)
}

pub fn run(out: &Path, rounds: usize) -> Result<()> {
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let lines = measure(&host, rounds)?;
    let table = format!(
        "# podman and `run` with husk beside crun and runc\n\n{}",
        markdown_of(&lines.ordered(), &host, rounds)?
    );
    std::fs::write(out.join("engines.md"), &table)?;
    std::fs::write(out.join("engines.json"), serde_json::to_string_pretty(&lines.ordered())?)?;
    print!("{table}");
    Ok(())
}
