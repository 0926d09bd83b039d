//! The whole suite in one go, as issue #8 asks: start-up (husk-vmm beside
//! QEMU microvm; `run` and `podman run` with husk beside crun and runc; the
//! host CPU each process spends per start) and density (husk beside crun),
//! written as one summary with every sample as CSV/JSON and PNG plots.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use husk_tests::paths;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, Series};
use crate::{density, engines, plot, report, vmm};

pub struct SuiteOptions {
    /// Boots per VMM, and rounds of the engine comparison.
    pub runs: usize,
    /// Local husk-vmm start-ups (no VM).
    pub socket_runs: usize,
    /// Most containers the density run starts per runtime.
    pub density_count: usize,
    /// MemAvailable each runtime's containers may take in the density run, MiB.
    pub density_budget_mib: u64,
}

/// A CPU-time series (not "first vCPU entry", a wall time).
fn is_cpu(series: &Series) -> bool {
    series.group.starts_with("host CPU") || series.system.ends_with(", CPU")
}

pub fn run(out: &Path, options: &SuiteOptions) -> Result<()> {
    let started = Instant::now();
    let step = |n: usize, what: &str| {
        eprintln!("husk-bench suite: [{n}/4] {what}{}", crate::stats::eta(started, 0, 1));
    };
    step(1, "the machine, and the test host's versions");
    let host = TestHost::shared(&paths::repo_dir().join("target/debug/husk-testhost"))?;
    let machine = report::machine(Some(&host)).context("recording the machine")?;
    report::write_machine(out, &machine)?;

    step(2, "husk-vmm start-up beside QEMU microvm");
    let vmm = vmm::measure(&host, options.runs, options.socket_runs, 0)?;
    step(3, "run and podman run with husk, crun and runc, and their host CPU per start");
    let engines = engines::measure(&host, options.runs)?;
    step(4, "density: idle containers until the count or the memory floor, husk then crun");
    let density = density::run(out, options.density_count, options.density_count, options.density_budget_mib)?;

    let mut all: Vec<&Series> = vmm.series.iter().collect();
    all.extend(engines.ordered());
    report::write_samples(out, &all)?;

    let vmm_times: Vec<&Series> = vmm.series.iter().filter(|s| s.unit == "ms" && !is_cpu(s)).collect();
    plot::distributions(&out.join("startup-vmm.png"), "husk-vmm beside QEMU microvm: start-up (ms)", &vmm_times)?;
    let engine_times: Vec<&Series> = engines.ordered().into_iter().filter(|s| !is_cpu(s)).collect();
    plot::distributions(
        &out.join("startup-engines.png"),
        "Container start-up, husk beside crun and runc (ms)",
        &engine_times,
    )?;
    let cpu: Vec<&Series> = all.iter().copied().filter(|s| is_cpu(s)).collect();
    // The plot shows totals (the table breaks them down by process).
    let cpu_totals: Vec<&Series> =
        cpu.iter().copied().filter(|s| s.group.ends_with(": total") || s.group == vmm::CPU_GROUP).collect();
    plot::distributions(&out.join("startup-cpu.png"), "Host CPU time per start (user + sys, ms)", &cpu_totals)?;

    let mut summary = String::new();
    writeln!(summary, "# husk benchmarks, {}\n", crate::stats::utc_date())?;
    writeln!(summary, "{}", machine.markdown())?;
    writeln!(
        summary,
        "Command: `benches/run.sh` (`husk-bench suite --runs {} --density-count {}`); took {:.1} min. Every \
         sample: `samples.csv`, `samples.json`; density steps: `density.json`.\n",
        options.runs,
        options.density_count,
        started.elapsed().as_secs_f64() / 60.0
    )?;

    writeln!(summary, "## Headline ratios (medians, same run)\n")?;
    for group in crate::stats::groups(&engine_times) {
        let ratios: Vec<String> = ["crun", "runc"]
            .iter()
            .filter_map(|b| engines::ratio(&engines, group, b).map(|r| format!("husk / {b} = {r:.2}")))
            .collect();
        if !ratios.is_empty() {
            writeln!(summary, "- {group}: {}", ratios.join(", "))?;
        }
    }
    writeln!(
        summary,
        "- husk-vmm / QEMU microvm, same kernel and initramfs: guest kernel start → agent ready {:.2}, whole run \
         {:.2}, host CPU per boot {:.2}",
        vmm.printk_ratio, vmm.run_ratio, vmm.cpu_ratio
    )?;
    for line in density.headline() {
        writeln!(summary, "- {line}")?;
    }

    writeln!(summary, "\n## Start-up: husk-vmm beside QEMU microvm\n")?;
    writeln!(summary, "{}", vmm.markdown(&host)?)?;
    writeln!(
        summary,
        "husk-vmm's own memory beside the guest's (its overhead, Firecracker's published bound is 5 MiB) is measured \
         beside every container VM under Density.\n"
    )?;
    writeln!(summary, "![husk-vmm start-up distributions](startup-vmm.png)\n")?;
    writeln!(summary, "## Start-up: `run` and `podman run`, husk beside crun and runc\n")?;
    writeln!(summary, "{}", engines::markdown_of(&engine_times, &host, options.runs)?)?;
    writeln!(summary, "![container start-up distributions](startup-engines.png)\n")?;
    writeln!(summary, "## Host CPU time per start\n")?;
    writeln!(
        summary,
        "User + system time of every host process a start ran, summed per process; the container starts come from \
         the kernel's process accounting in the test host (10 ms resolution per process).\n"
    )?;
    summary.push_str(&markdown_table(cpu.iter().copied(), 0));
    writeln!(summary, "\n![host CPU per start](startup-cpu.png)\n")?;
    writeln!(summary, "## Density\n")?;
    writeln!(summary, "{}", density.markdown())?;
    writeln!(summary, "![memory per container](density-memory.png)\n")?;
    writeln!(summary, "![start time against count](density-start.png)")?;

    std::fs::write(out.join("summary.md"), &summary)?;
    print!("{summary}");
    eprintln!(
        "husk-bench suite: wrote {} in {:.1} min",
        out.join("summary.md").display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_series_are_told_from_wall_times() {
        assert!(is_cpu(&Series::of(vmm::CPU_GROUP, "husk-vmm", "ms")));
        assert!(is_cpu(&Series::of("host CPU per container start, run --bundle: total", "husk", "ms")));
        assert!(is_cpu(&Series::of("process start → API socket accepting, here", "husk-vmm, CPU", "ms")));
        assert!(!is_cpu(&Series::of("InstanceStart → first vCPU entry", "husk-vmm", "ms")));
        assert!(!is_cpu(&Series::of("process start → API socket accepting, here", "husk-vmm, wall", "ms")));
    }
}
