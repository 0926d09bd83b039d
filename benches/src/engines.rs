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

use crate::stats::{markdown_table, BenchLines};

pub fn run(out: &Path, rounds: usize) -> Result<()> {
    let repo = paths::repo_dir();
    let husk = repo.join("target/release/husk");
    if !husk.is_file() || !repo.join("target/release/husk-vmm").is_file() {
        bail!("build the release husk and husk-vmm first (benches/run.sh does)");
    }
    let host = TestHost::shared(&repo.join("target/debug/husk-testhost"))?;
    let info = host.info()?;
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
    crate::add_suite_run(&mut lines, &host, &RunRequest { argv, timeout_secs: 3600, ..Default::default() }, "engine")?;
    let mut table = String::new();
    writeln!(table, "# podman and `run` with husk beside crun and runc\n")?;
    writeln!(
        table,
        "Test host: {:?} (kernel {}, KVM {}); podman 4.3 + conmon with the overlay driver and `--network none`'s \
         default (containers.conf netns = none), the busybox image; husk boots one microVM per container (release \
         husk-vmm, 1 vCPU, 512 MiB). {rounds} rounds, runtimes interleaved within each round, medians. The test \
         host is software-emulated (QEMU TCG with nested SVM): absolute times are far above hardware, compare \
         ratios from this one run.\n",
        host.mode(),
        info.kernel,
        info.kvm
    )?;
    table.push_str(&markdown_table(lines.ordered(), 0));
    let series = &lines.series;
    let ratio = |a: &str, b: &str| series.get(a).zip(series.get(b)).map(|(a, b)| a.median() / b.median());
    writeln!(table)?;
    for baseline in ["crun", "runc"] {
        if let Some(r) = ratio("podman run --rm /bin/true (husk)", &format!("podman run --rm /bin/true ({baseline})")) {
            writeln!(table, "podman run --rm, husk / {baseline}: {r:.2}.")?;
        }
        if let Some(r) = ratio("husk run --bundle, /bin/true", &format!("{baseline} run --bundle, /bin/true")) {
            writeln!(table, "`run` of a bundle, husk / {baseline}: {r:.2}.")?;
        }
    }
    std::fs::write(out.join("engines.md"), &table)?;
    std::fs::write(out.join("engines.json"), serde_json::to_string_pretty(&lines.ordered())?)?;
    print!("{table}");
    Ok(())
}
