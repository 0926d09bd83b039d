//! Density: how many idle containers fit, and what each one costs the
//! host. husk-engine-suite's `density` runs in the test host: `sleep`
//! containers started one after another with `husk run --detach`, then
//! `crun run --detach`, until a count or a memory budget; after each start
//! every container's host processes are measured (PSS, husk-vmm split into
//! guest RAM touched and its own overhead) beside MemAvailable. This side
//! reads its `DENSITY` lines and writes density.md, density.json and the
//! plots density-memory.png and density-start.png.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use husk_tests::paths;
use husk_tests::protocol::{Frame, RunRequest};
use husk_tests::testhost::TestHost;
use serde::{Deserialize, Serialize};

/// The containers after one start; memory figures are means per container
/// over all `count` containers, in KiB (the suite's `DENSITY` line).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Step {
    pub system: String,
    pub count: usize,
    /// Wall time of this start.
    pub start_ms: f64,
    /// From the first start to the end of this step's measurement.
    pub elapsed_s: f64,
    pub per_container_pss_kib: f64,
    pub vmm_pss_kib: f64,
    pub vmm_rss_kib: f64,
    pub monitor_pss_kib: f64,
    pub init_pss_kib: f64,
    pub other_pss_kib: f64,
    pub guest_touched_kib: f64,
    pub guest_pss_kib: f64,
    /// Of the guest memory touched, in transparent huge pages.
    #[serde(default)]
    pub guest_huge_kib: f64,
    pub vmm_overhead_kib: f64,
    pub vmm_overhead_rss_kib: f64,
    pub processes_per_container: f64,
    pub newest_pss_kib: u64,
    pub total_pss_kib: u64,
    pub mem_available_kib: u64,
    pub mem_available_drop_kib: u64,
    /// Growth of /proc/meminfo fields since before the first start, per
    /// container, KiB (the fields the test host's kernel has).
    #[serde(default)]
    pub meminfo_growth_kib: BTreeMap<String, f64>,
}

/// A runtime's run, summed up (the suite's `DENSITY-END` line).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct End {
    pub system: String,
    pub count: usize,
    /// "count" or "budget".
    pub stopped_by: String,
    pub stop_detail: String,
    pub count_limit: usize,
    pub budget_kib: u64,
    pub mem_total_kib: u64,
    pub mem_available_start_kib: u64,
    pub mem_available_end_kib: u64,
    pub mem_available_after_delete_kib: u64,
    pub vm_mem_mib: u64,
    pub delete_s: f64,
    pub how: String,
}

/// One runtime's steps and summary.
#[derive(Clone, Debug, Serialize)]
pub struct SystemRun {
    pub steps: Vec<Step>,
    pub end: End,
}

impl SystemRun {
    fn last(&self) -> &Step {
        self.steps.last().expect("a run has a step (checked when parsed)")
    }

    /// Containers per second of start time, over the first `n` starts.
    fn rate(&self, n: usize) -> f64 {
        let ms: f64 = self.steps[..n].iter().map(|s| s.start_ms).sum();
        n as f64 / (ms / 1e3)
    }

    /// Host memory per container by MemAvailable, KiB.
    fn available_per_container(step: &Step) -> f64 {
        step.mem_available_drop_kib as f64 / step.count as f64
    }
}

/// What the density bench measured.
#[derive(Clone, Debug, Serialize)]
pub struct DensityResult {
    /// Where it ran: the test host's mode, kernel and KVM.
    pub host: String,
    pub runs: Vec<SystemRun>,
    /// The suite's run time, s.
    pub suite_s: f64,
}

impl DensityResult {
    pub fn system(&self, name: &str) -> Option<&SystemRun> {
        self.runs.iter().find(|r| r.end.system == name)
    }

    /// The report's body in markdown (for density.md and the suite's
    /// summary): how it was measured, a table per runtime, where the cost
    /// goes. No title and no plots.
    pub fn markdown(&self) -> String {
        markdown(self).expect("formatting into a String does not fail")
    }

    /// The headline numbers, one sentence each: what each runtime reached
    /// and what a container cost, and husk beside crun.
    pub fn headline(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .runs
            .iter()
            .map(|run| {
                let s = run.last();
                format!(
                    "Density, {}: {} idle containers ({}), {:.1} MiB host PSS and {:.1} MiB of MemAvailable per \
                     container, median start {:.0} ms",
                    run.end.system,
                    run.end.count,
                    if run.end.stopped_by == "count" { "the count limit" } else { "stopped by the memory budget" },
                    mib(s.per_container_pss_kib),
                    mib(SystemRun::available_per_container(s)),
                    median(run.steps.iter().map(|s| s.start_ms))
                )
            })
            .collect();
        if let (Some(husk), Some(crun)) = (self.system("husk"), self.system("crun")) {
            let (h, c) = (husk.last(), crun.last());
            lines.push(format!(
                "Density, husk / crun per container: {:.1}× host PSS, {:.1}× MemAvailable, {:.1}× start time",
                h.per_container_pss_kib / c.per_container_pss_kib,
                SystemRun::available_per_container(h) / SystemRun::available_per_container(c),
                median(husk.steps.iter().map(|s| s.start_ms)) / median(crun.steps.iter().map(|s| s.start_ms))
            ));
        }
        lines
    }
}

/// Runs the density suite in the test host (at most `husk_count` husk and
/// `crun_count` crun containers, each runtime's containers taking at most
/// `budget_mib` of MemAvailable), writes density.md, density.json and the
/// plots under `out`, and returns what it measured.
pub fn run(out: &Path, husk_count: usize, crun_count: usize, budget_mib: u64) -> Result<DensityResult> {
    let repo = paths::repo_dir();
    let husk = repo.join("target/release/husk");
    if !husk.is_file() || !repo.join("target/release/husk-vmm").is_file() {
        bail!("build the release husk and husk-vmm first (benches/run.sh does)");
    }
    let host = TestHost::shared(&repo.join("target/debug/husk-testhost"))?;
    let info = host.info()?;
    let argv: Vec<String> = vec![
        repo.join("target/debug/husk-engine-suite").to_string_lossy().into_owned(),
        "density".into(),
        "--husk".into(),
        husk.to_string_lossy().into_owned(),
        "--husk-count".into(),
        husk_count.to_string(),
        "--crun-count".into(),
        crun_count.to_string(),
        "--budget-mib".into(),
        budget_mib.to_string(),
    ];
    eprintln!(
        "husk-bench density: up to {husk_count} husk and {crun_count} crun containers ({budget_mib} MiB budget each)"
    );
    let started = Instant::now();
    // The suite's progress (its stderr) as it comes.
    let progress = |frame: &Frame| {
        if let Frame::Stderr(data) = frame {
            let _ = std::io::stderr().write_all(data);
        }
    };
    let output = host.run_streaming(&RunRequest { argv, timeout_secs: 3600, ..Default::default() }, &progress)?;
    let suite_s = started.elapsed().as_secs_f64();
    if !output.report.success() {
        bail!("the density suite failed ({:?}):\n{}\n{}", output.report, output.stdout_text(), output.stderr_text());
    }
    let runs = parse(&output.stdout_text())?;
    let result =
        DensityResult { host: format!("{:?} (kernel {}, KVM {})", host.mode(), info.kernel, info.kvm), runs, suite_s };
    write(out, &result)?;
    Ok(result)
}

/// The runs in a suite's stdout: `DENSITY {step}` lines, each runtime's
/// closed by a `DENSITY-END {end}` line.
pub fn parse(stdout: &str) -> Result<Vec<SystemRun>> {
    let mut runs = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for (number, line) in stdout.lines().enumerate() {
        if let Some(json) = line.strip_prefix("DENSITY ") {
            let step: Step = serde_json::from_str(json).with_context(|| format!("DENSITY line {}", number + 1))?;
            let expected = steps.last().map_or(1, |s| s.count + 1);
            ensure!(
                step.count == expected && steps.last().is_none_or(|s| s.system == step.system),
                "DENSITY line {}: {} container {} where {} was due",
                number + 1,
                step.system,
                step.count,
                expected
            );
            steps.push(step);
        } else if let Some(json) = line.strip_prefix("DENSITY-END ") {
            let end: End = serde_json::from_str(json).with_context(|| format!("DENSITY-END line {}", number + 1))?;
            ensure!(
                !steps.is_empty() && steps.len() == end.count && steps.iter().all(|s| s.system == end.system),
                "DENSITY-END line {}: {} ended with {} containers after {} {} steps",
                number + 1,
                end.system,
                end.count,
                steps.len(),
                steps.first().map_or(end.system.as_str(), |s| s.system.as_str())
            );
            runs.push(SystemRun { steps: std::mem::take(&mut steps), end });
        }
    }
    ensure!(steps.is_empty(), "the suite's output ends with {} DENSITY lines and no DENSITY-END", steps.len());
    ensure!(!runs.is_empty(), "the suite printed no DENSITY-END line");
    Ok(runs)
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// The report's body: how it was measured, a table per runtime and where
/// the cost goes (no title, no plots).
fn markdown(result: &DensityResult) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    let how = result.runs.first().map_or("", |r| r.end.how.as_str());
    writeln!(
        md,
        "Test host: {}. Containers started one after another with {how}, until the count limit or the memory \
         budget; after each start every container so far is measured. PSS is each host process's proportional \
         set size (/proc/PID/smaps_rollup; husk-vmm's from /proc/PID/smaps, split into the guest RAM mapping = \
         guest memory touched, and the rest = the VMM's own overhead); memory columns are means per container over \
         all containers running at that step, MiB. \"MemAvailable drop\" is the fall of /proc/meminfo's \
         MemAvailable since before the first start, per container. Absolute times in a nested, software-emulated \
         test host are far above hardware; compare the runtimes within this run. The suite took {:.0} s.\n",
        result.host, result.suite_s
    )?;
    for run in &result.runs {
        let end = &run.end;
        writeln!(md, "### {}\n", end.system)?;
        writeln!(
            md,
            "{} containers: {}. MemAvailable {:.0} MiB before, {:.0} MiB with all running, {:.0} MiB after deleting \
             them (in {:.1} s; nothing left behind). Budget {:.0} MiB of MemAvailable, host MemTotal {:.0} MiB{}.\n",
            end.count,
            end.stop_detail,
            mib(end.mem_available_start_kib as f64),
            mib(end.mem_available_end_kib as f64),
            mib(end.mem_available_after_delete_kib as f64),
            end.delete_s,
            mib(end.budget_kib as f64),
            mib(end.mem_total_kib as f64),
            if end.vm_mem_mib > 0 { format!("; each VM has {} MiB", end.vm_mem_mib) } else { String::new() }
        )?;
        let vm = run.steps.iter().any(|s| s.vmm_pss_kib > 0.0);
        md.push_str(
            "| count | start ms | containers/s so far | PSS / container | newest's PSS | MemAvailable drop / container |",
        );
        if vm {
            md.push_str(" husk-vmm PSS | guest touched | VMM overhead PSS (RSS) | monitor PSS |\n");
            md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        } else {
            md.push_str(" init PSS | other PSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        }
        for (i, s) in run.steps.iter().enumerate() {
            write!(
                md,
                "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} |",
                s.count,
                s.start_ms,
                run.rate(i + 1),
                mib(s.per_container_pss_kib),
                mib(s.newest_pss_kib as f64),
                mib(SystemRun::available_per_container(s))
            )?;
            if vm {
                writeln!(
                    md,
                    " {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} |",
                    mib(s.vmm_pss_kib),
                    mib(s.guest_touched_kib),
                    mib(s.vmm_overhead_kib),
                    mib(s.vmm_overhead_rss_kib),
                    mib(s.monitor_pss_kib)
                )?;
            } else {
                writeln!(md, " {:.1} | {:.1} |", mib(s.init_pss_kib), mib(s.other_pss_kib))?;
            }
        }
        writeln!(md)?;
    }
    md.push_str("### Where the cost goes\n\n");
    md.push_str(&where_the_cost_goes(result));
    Ok(md)
}

/// The breakdown of the last step of each run, in words.
fn where_the_cost_goes(result: &DensityResult) -> String {
    let mut text = String::new();
    let pct = |part: f64, whole: f64| 100.0 * part / whole;
    for run in &result.runs {
        let s = run.last();
        let pss = s.per_container_pss_kib;
        let available = SystemRun::available_per_container(s);
        let _ =
            write!(text, "- **{}** at {} containers: {:.1} MiB PSS per container", run.end.system, s.count, mib(pss));
        if s.vmm_pss_kib > 0.0 {
            let _ = write!(
                text,
                ": guest memory touched {:.1} MiB ({:.0} %, of the VM's {} MiB; {:.1} MiB of it in 2 MiB transparent \
                 huge pages, whole as soon as the guest touches any of their bytes), husk-vmm's own overhead {:.1} \
                 MiB ({:.0} %), the monitor {:.1} MiB ({:.0} %)",
                mib(s.guest_pss_kib),
                pct(s.guest_pss_kib, pss),
                run.end.vm_mem_mib,
                mib(s.guest_huge_kib),
                mib(s.vmm_overhead_kib),
                pct(s.vmm_overhead_kib, pss),
                mib(s.monitor_pss_kib),
                pct(s.monitor_pss_kib, pss)
            );
            if s.other_pss_kib > 0.0 {
                let _ = write!(text, ", other processes {:.1} MiB", mib(s.other_pss_kib));
            }
        } else {
            let _ = write!(
                text,
                ": the container's init {:.1} MiB, other processes {:.1} MiB",
                mib(s.init_pss_kib),
                mib(s.other_pss_kib)
            );
        }
        let _ = writeln!(
            text,
            ". MemAvailable fell {:.1} MiB per container, {:+.1} MiB beside the PSS{}.",
            mib(available),
            mib(available - pss),
            meminfo_growth(s)
        );
    }
    text.push_str(
        "\nPSS counts only memory processes map, shared pages split among their users; MemAvailable also falls with \
         kernel memory (slab, page tables, KVM's guest page tables), tmpfs (the runtimes' state, husk's jails, the \
         overlay upper layers) and page cache that cannot be reclaimed, and does not fall for shared pages that were \
         resident before the run (binaries, libraries) or for reclaimable cache.\n",
    );
    if let (Some(husk), Some(crun)) = (result.system("husk"), result.system("crun")) {
        let (h, c) = (husk.last(), crun.last());
        let _ = writeln!(
            text,
            "\nhusk / crun per container: {:.1}× by PSS, {:.1}× by MemAvailable; start {:.1}× slower (median start \
             {:.0} ms vs {:.0} ms).",
            h.per_container_pss_kib / c.per_container_pss_kib,
            SystemRun::available_per_container(h) / SystemRun::available_per_container(c),
            median(husk.steps.iter().map(|s| s.start_ms)) / median(crun.steps.iter().map(|s| s.start_ms)),
            median(husk.steps.iter().map(|s| s.start_ms)),
            median(crun.steps.iter().map(|s| s.start_ms)),
        );
    }
    text
}

/// What a /proc/meminfo field holds, for the report.
fn meminfo_meaning(field: &str) -> &'static str {
    match field {
        "AnonPages" => "process memory, in the PSS",
        "Cached" => "page cache, tmpfs included",
        "Shmem" => "tmpfs and shared memory",
        "Slab" => "kernel objects",
        "KernelStack" => "kernel stacks",
        "PageTables" => "process page tables",
        "SecPageTables" => "KVM's guest page tables",
        _ => "",
    }
}

/// `; /proc/meminfo per container: Shmem +x MiB (…), …`, largest growth
/// first, fields that moved by less than 0.05 MiB left out.
fn meminfo_growth(step: &Step) -> String {
    let mut fields: Vec<(&String, f64)> =
        step.meminfo_growth_kib.iter().map(|(name, kib)| (name, mib(*kib))).filter(|(_, m)| m.abs() >= 0.05).collect();
    if fields.is_empty() {
        return String::new();
    }
    fields.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> =
        fields.iter().map(|(name, m)| format!("{name} {m:+.1} MiB ({})", meminfo_meaning(name))).collect();
    format!("; /proc/meminfo grew per container: {}", parts.join(", "))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Writes density.md, density.json and the two plots.
fn write(out: &Path, result: &DensityResult) -> Result<()> {
    let md = format!(
        "# Density: idle containers on one host\n\n{}\n![host memory per container](density-memory.png)\n\n\
         ![start time against count](density-start.png)\n",
        result.markdown()
    );
    std::fs::write(out.join("density.md"), &md)?;
    std::fs::write(out.join("density.json"), serde_json::to_string_pretty(result)?)?;
    let mut memory = Vec::new();
    let mut start = Vec::new();
    for run in &result.runs {
        let name = &run.end.system;
        let points = |f: &dyn Fn(&Step) -> f64| run.steps.iter().map(|s| (s.count as f64, f(s))).collect::<Vec<_>>();
        memory.push((format!("{name}: PSS"), points(&|s| mib(s.per_container_pss_kib))));
        memory.push((format!("{name}: MemAvailable drop"), points(&|s| mib(SystemRun::available_per_container(s)))));
        start.push((name.clone(), points(&|s| s.start_ms / 1e3)));
    }
    crate::plot::lines(
        &out.join("density-memory.png"),
        "Host memory per idle container",
        "containers running",
        "MiB per container",
        &memory,
    )?;
    crate::plot::lines(
        &out.join("density-start.png"),
        "Start time as the host fills",
        "container",
        "start, s",
        &start,
    )?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(system: &str, count: usize, pss: f64, vmm: f64, guest: f64, drop: u64) -> String {
        let step = serde_json::json!({
            "system": system, "count": count, "start_ms": 100.0 * count as f64, "elapsed_s": count as f64,
            "per_container_pss_kib": pss, "vmm_pss_kib": vmm, "vmm_rss_kib": vmm + 10240.0,
            "monitor_pss_kib": pss - vmm, "init_pss_kib": 0.0, "other_pss_kib": 0.0,
            "guest_touched_kib": guest, "guest_pss_kib": guest, "guest_huge_kib": guest / 2.0, "vmm_overhead_kib": vmm - guest,
            "vmm_overhead_rss_kib": vmm + 10240.0 - guest, "processes_per_container": 2.0,
            "newest_pss_kib": pss as u64, "total_pss_kib": (pss * count as f64) as u64,
            "mem_available_kib": 1_000_000 - drop, "mem_available_drop_kib": drop,
            "meminfo_growth_kib": {"Shmem": 2048.0, "SecPageTables": 1024.0, "Slab": 10.0, "Cached": -3072.0},
        });
        format!("DENSITY {step}")
    }

    fn end(system: &str, count: usize) -> String {
        let end = serde_json::json!({
            "system": system, "count": count, "stopped_by": "count", "stop_detail": "reached the count limit",
            "count_limit": count, "budget_kib": 2048 * 1024, "mem_total_kib": 4_000_000,
            "mem_available_start_kib": 1_000_000, "mem_available_end_kib": 900_000,
            "mem_available_after_delete_kib": 999_000, "vm_mem_mib": if system == "husk" { 512 } else { 0 },
            "delete_s": 1.5, "how": "the runtime's own `run --detach`",
        });
        format!("DENSITY-END {end}")
    }

    fn output() -> String {
        [
            "ok: something else".to_owned(),
            step("husk", 1, 102400.0, 92160.0, 61440.0, 120 * 1024),
            step("husk", 2, 100000.0, 90000.0, 60000.0, 240 * 1024),
            end("husk", 2),
            step("crun", 1, 1024.0, 0.0, 0.0, 2048),
            step("crun", 2, 1024.0, 0.0, 0.0, 4096),
            end("crun", 2),
        ]
        .join("\n")
    }

    #[test]
    fn runs_are_parsed_per_system() {
        let runs = parse(&output()).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].end.system.as_str(), runs[0].steps.len()), ("husk", 2));
        assert_eq!(runs[1].steps[1].mem_available_drop_kib, 4096);
        // 2 starts of 100 and 200 ms: 2 containers in 0.3 s.
        assert!((runs[0].rate(2) - 2.0 / 0.3).abs() < 1e-9);
    }

    #[test]
    fn inconsistent_output_is_an_error() {
        let skipped = [step("husk", 1, 1.0, 0.0, 0.0, 1), step("husk", 3, 1.0, 0.0, 0.0, 1)].join("\n");
        assert!(parse(&skipped).unwrap_err().to_string().contains("container 3 where 2 was due"));
        let unended = step("husk", 1, 1.0, 0.0, 0.0, 1);
        assert!(parse(&unended).unwrap_err().to_string().contains("no DENSITY-END"));
        let miscounted = [step("husk", 1, 1.0, 0.0, 0.0, 1), end("husk", 2)].join("\n");
        assert!(parse(&miscounted).unwrap_err().to_string().contains("ended with 2 containers after 1"));
        assert!(parse("ok: nothing").unwrap_err().to_string().contains("no DENSITY-END"));
        assert!(parse("DENSITY {\"system\": \"husk\"}").is_err());
    }

    #[test]
    fn the_report_breaks_the_cost_down_from_the_data() {
        let result = DensityResult { host: "Nested".into(), runs: parse(&output()).unwrap(), suite_s: 60.0 };
        let md = result.markdown();
        assert_eq!(
            result.headline(),
            [
                "Density, husk: 2 idle containers (the count limit), 97.7 MiB host PSS and 120.0 MiB of MemAvailable \
                 per container, median start 150 ms",
                "Density, crun: 2 idle containers (the count limit), 1.0 MiB host PSS and 2.0 MiB of MemAvailable per \
                 container, median start 150 ms",
                "Density, husk / crun per container: 97.7× host PSS, 60.0× MemAvailable, 1.0× start time",
            ]
        );
        // husk's last step: 100000 KiB PSS = 97.7 MiB, guest 58.6 MiB (60 %),
        // VMM overhead 29.3 MiB (30 %), monitor 9.8 MiB (10 %); MemAvailable
        // 120 MiB per container, 22.3 MiB beside the PSS.
        assert!(md.contains("at 2 containers: 97.7 MiB PSS per container"), "{md}");
        assert!(
            md.contains("guest memory touched 58.6 MiB (60 %, of the VM's 512 MiB; 29.3 MiB of it in 2 MiB"),
            "{md}"
        );
        assert!(md.contains("husk-vmm's own overhead 29.3 MiB (30 %), the monitor 9.8 MiB (10 %)"), "{md}");
        assert!(md.contains("MemAvailable fell 120.0 MiB per container, +22.3 MiB beside the PSS"), "{md}");
        // Largest growth first; Slab's 10 KiB is left out.
        assert!(
            md.contains(
                "/proc/meminfo grew per container: Shmem +2.0 MiB (tmpfs and shared memory), SecPageTables +1.0 MiB \
                 (KVM's guest page tables), Cached -3.0 MiB (page cache, tmpfs included)."
            ),
            "{md}"
        );
        // crun: 1 MiB PSS, 2 MiB MemAvailable per container.
        assert!(md.contains("husk / crun per container: 97.7× by PSS, 60.0× by MemAvailable"), "{md}");
        assert!(md.contains("| 2 | 200 | 6.67 | 97.7 | 97.7 | 120.0 | 87.9 | 58.6 | 29.3 (39.3) | 9.8 |"), "{md}");
        assert!(md.contains("| 2 | 200 | 6.67 | 1.0 | 1.0 | 2.0 | 0.0 | 0.0 |"), "{md}");
    }

    #[test]
    fn write_puts_the_report_the_samples_and_both_plots() {
        let out = std::env::temp_dir().join(format!("husk-density-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let result = DensityResult { host: "Nested".into(), runs: parse(&output()).unwrap(), suite_s: 60.0 };
        write(&out, &result).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("density.json")).unwrap()).unwrap();
        assert_eq!(json["runs"][1]["steps"][1]["mem_available_drop_kib"], 4096);
        assert!(std::fs::read_to_string(out.join("density.md")).unwrap().contains("## Where the cost goes"));
        for png in ["density-memory.png", "density-start.png"] {
            let bytes = std::fs::read(out.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{png}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
