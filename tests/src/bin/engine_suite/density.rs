//! `husk-engine-suite density`: how many idle containers fit on the host,
//! and what each one costs it.
//!
//! For husk, then crun, containers running `sleep 100000` are started one
//! after another with the runtime's own `run --detach` (no podman, no
//! conmon: the runtime alone) until a count or a memory budget is reached.
//! Each container has its own bundle whose rootfs is an overlay on one
//! shared copy of the busybox rootfs, as podman's overlay driver gives it.
//! After each start, every container started so far is measured: the PSS
//! of each host process belonging to it (husk: its monitor and husk-vmm;
//! crun: the container's init), husk-vmm's split into the guest memory
//! mapping (what the guest touched) and the rest (the VMM's own overhead),
//! and MemAvailable. One `DENSITY {json}` line per step and a
//! `DENSITY-END {json}` line per runtime go to stdout for husk-bench; then
//! every container is deleted and the suite checks nothing is left.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;

use super::{processes, unmount_below, wait_with_deadline, with_descendants, Env, Process, Runtime, COMMAND_TIMEOUT};

/// Every container id of this suite starts with it; a whole command-line
/// argument starting with it marks a process an earlier, killed run left.
const ID_PREFIX: &str = "hes-density-";

/// /proc/meminfo fields whose growth per container is reported: where the
/// memory no process maps goes (tmpfs, slab, page tables; SecPageTables is
/// KVM's guest page tables on kernels that have it).
const MEMINFO_FIELDS: [&str; 7] =
    ["AnonPages", "Cached", "Shmem", "Slab", "KernelStack", "PageTables", "SecPageTables"];

/// Never let MemAvailable fall below this, whatever the budget.
const RESERVE_KIB: u64 = 256 * 1024;

/// What a run may use: at most `count` containers, and at most
/// `budget_mib` of the host's MemAvailable.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub count: usize,
    pub budget_mib: u64,
}

/// Runs the density measurement for husk (`husk_count` containers at most)
/// and then crun (`crun_count`); a count of 0 skips the runtime.
pub fn density(env: &Env, husk_count: usize, crun_count: usize, budget_mib: u64) -> Result<()> {
    let dir = env.state.join("density");
    kill_leftovers();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lower = dir.join("lower");
    let status = Command::new("cp").arg("-a").arg(&env.rootfs).arg(&lower).status()?;
    ensure!(status.success(), "copying {} to {} failed", env.rootfs.display(), lower.display());
    let runs = [(Runtime::Husk, husk_count), (Runtime::Crun, crun_count)];
    for (runtime, count) in runs.into_iter().filter(|&(_, count)| count > 0) {
        let binary = env.binary(runtime)?;
        let fill = Fill { runtime, binary, dir: dir.join(runtime.name()), lower: lower.clone() };
        fill.run(Limits { count, budget_mib })?;
    }
    Ok(())
}

/// Kills the monitors and VMMs an earlier, killed run left (they name
/// their container on the command line); they are in sessions of their own
/// and outlive the suite that started them.
fn kill_leftovers() {
    for process in processes() {
        if process.cmdline.split(' ').any(|arg| arg.starts_with(ID_PREFIX)) {
            eprintln!("density: killing {} `{}`, left by an earlier run", process.pid, process.cmdline);
            // SAFETY: signalling a process identified just above; no memory is touched.
            unsafe { libc::kill(process.pid, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------
// /proc parsing

/// A `Name:   N kB` line's value.
fn kib_field(line: &str, name: &str) -> Option<Result<u64>> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    let number = rest.trim().strip_suffix("kB").map(str::trim);
    Some(
        number
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("{name}: expected `<number> kB`, got {:?}", rest.trim())),
    )
}

/// Resident and proportional set size, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct MemUse {
    rss_kib: u64,
    pss_kib: u64,
}

/// The totals of a /proc/PID/smaps_rollup.
fn parse_smaps_rollup(text: &str) -> Result<MemUse> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| kib_field(line, name))
            .unwrap_or_else(|| Err(anyhow!("no {name} line in smaps_rollup")))
    };
    Ok(MemUse { rss_kib: field("Rss")?, pss_kib: field("Pss")? })
}

/// One mapping of a /proc/PID/smaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mapping {
    /// The mapped file, `[heap]` and the like, or empty for anonymous memory.
    path: String,
    size_kib: u64,
    rss_kib: u64,
    pss_kib: u64,
    /// Of the Rss, in transparent huge pages.
    anon_huge_kib: u64,
}

/// Whether an smaps line starts a mapping: `start-end perms offset dev inode [path]`.
fn mapping_header(line: &str) -> Option<String> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(start) || !hex(end) {
        return None;
    }
    let _perms_offset_dev_inode = [fields.next()?, fields.next()?, fields.next()?, fields.next()?];
    Some(fields.next().unwrap_or("").trim().to_owned())
}

/// Every mapping of a /proc/PID/smaps with its size, Rss and Pss.
fn parse_smaps(text: &str) -> Result<Vec<Mapping>> {
    let mut mappings: Vec<(Mapping, [bool; 3])> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if let Some(path) = mapping_header(line) {
            mappings.push((Mapping { path, ..Mapping::default() }, [false; 3]));
            continue;
        }
        let Some((mapping, seen)) = mappings.last_mut() else {
            bail!("smaps line {}: {line:?} comes before any mapping", number + 1);
        };
        let fields = [("Size", &mut mapping.size_kib), ("Rss", &mut mapping.rss_kib), ("Pss", &mut mapping.pss_kib)];
        for (i, (name, value)) in fields.into_iter().enumerate() {
            if let Some(parsed) = kib_field(line, name) {
                *value = parsed.with_context(|| format!("smaps line {}", number + 1))?;
                seen[i] = true;
            }
        }
        // Optional: absent on kernels without THP.
        if let Some(parsed) = kib_field(line, "AnonHugePages") {
            mapping.anon_huge_kib = parsed.with_context(|| format!("smaps line {}", number + 1))?;
        }
    }
    mappings
        .into_iter()
        .map(|(mapping, seen)| {
            ensure!(seen.iter().all(|&s| s), "smaps: the mapping {:?} lacks a Size, Rss or Pss line", mapping.path);
            Ok(mapping)
        })
        .collect()
}

/// husk-vmm's memory, split into the guest's RAM and the VMM's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VmmSplit {
    total: MemUse,
    /// The guest RAM mapping: its Rss is the guest memory touched so far.
    guest: MemUse,
    /// Of the guest's Rss, in transparent huge pages.
    guest_huge_kib: u64,
}

/// Splits husk-vmm's mappings: the guest RAM is the one anonymous (or
/// husk's memfd) mapping exactly `guest_kib` large, as husk-vmm maps a VM
/// below the 32-bit gap (every husk size up to 3 GiB) in one piece.
fn split_guest(mappings: &[Mapping], guest_kib: u64) -> Result<VmmSplit> {
    let is_guest =
        |m: &Mapping| m.size_kib == guest_kib && (m.path.is_empty() || m.path.starts_with("/memfd:husk-guest-memory"));
    let guest: Vec<&Mapping> = mappings.iter().filter(|m| is_guest(m)).collect();
    let [guest] = guest.as_slice() else {
        let mut largest: Vec<&Mapping> = mappings.iter().collect();
        largest.sort_by_key(|m| std::cmp::Reverse(m.size_kib));
        let largest: Vec<String> = largest.iter().take(4).map(|m| format!("{} KiB {:?}", m.size_kib, m.path)).collect();
        bail!(
            "expected one anonymous guest memory mapping of {guest_kib} KiB in husk-vmm, found {}; its largest \
             mappings: {}",
            guest.len(),
            largest.join(", ")
        );
    };
    let total = mappings.iter().fold(MemUse::default(), |sum, m| MemUse {
        rss_kib: sum.rss_kib + m.rss_kib,
        pss_kib: sum.pss_kib + m.pss_kib,
    });
    Ok(VmmSplit {
        total,
        guest: MemUse { rss_kib: guest.rss_kib, pss_kib: guest.pss_kib },
        guest_huge_kib: guest.anon_huge_kib,
    })
}

/// A field of /proc/meminfo, KiB.
fn meminfo_kib(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|line| kib_field(line, name))
        .unwrap_or_else(|| Err(anyhow!("no {name} line in /proc/meminfo")))
}

fn mem_available_kib() -> Result<u64> {
    meminfo_kib(&std::fs::read_to_string("/proc/meminfo")?, "MemAvailable")
}

/// The [`MEMINFO_FIELDS`] this kernel has, KiB.
fn meminfo_fields(text: &str) -> Result<BTreeMap<&'static str, u64>> {
    let mut fields = BTreeMap::new();
    for name in MEMINFO_FIELDS {
        if let Some(value) = text.lines().find_map(|line| kib_field(line, name)) {
            fields.insert(name, value?);
        }
    }
    Ok(fields)
}

/// How much each field grew from `before` to `now`, per container (KiB,
/// negative when it shrank).
fn growth_per_container(
    before: &BTreeMap<&'static str, u64>,
    now: &BTreeMap<&'static str, u64>,
    containers: usize,
) -> BTreeMap<&'static str, f64> {
    before
        .iter()
        .filter_map(|(name, was)| Some((*name, (*now.get(name)? as f64 - *was as f64) / containers as f64)))
        .collect()
}

// ---------------------------------------------------------------------------
// Which host processes belong to a container

/// The role of a container's host process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    /// husk-vmm: the guest's RAM and the VMM's own memory.
    Vmm,
    /// husk's `__monitor-init`: the container's init as the engine sees it.
    Monitor,
    /// crun's container init (its `sleep`).
    Init,
    /// Anything else started for the container.
    Other,
}

fn role_of(process: &Process, roots: &[i32], runtime: Runtime) -> Role {
    if process.is_husk_vmm() {
        Role::Vmm
    } else if process.cmdline.split(' ').any(|arg| arg == "__monitor-init") {
        Role::Monitor
    } else if runtime == Runtime::Crun && roots.contains(&process.pid) {
        Role::Init
    } else {
        Role::Other
    }
}

/// The processes of container `id`: the `roots` the runtime recorded for
/// it, every process with `id` as a whole command-line argument (husk's
/// monitor, husk-vmm's `--id`), and all their descendants. Whole arguments
/// only: `…-1` must not claim the processes of `…-10`.
fn members(all: &[Process], id: &str, roots: &[i32]) -> Vec<Process> {
    let mut owned: BTreeSet<i32> = roots.iter().copied().filter(|pid| all.iter().any(|p| p.pid == *pid)).collect();
    owned.extend(all.iter().filter(|p| p.cmdline.split(' ').any(|arg| arg == id)).map(|p| p.pid));
    with_descendants(all, owned)
}

// ---------------------------------------------------------------------------
// Filling the host

/// A started container.
struct Started {
    id: String,
    bundle: PathBuf,
    /// What the runtime recorded: husk's monitor and husk-vmm, crun's init.
    roots: Vec<i32>,
    /// The VM's memory (husk), KiB.
    guest_kib: u64,
}

/// One container's host processes, measured.
#[derive(Clone, Debug, Default, Serialize)]
struct ContainerMemory {
    processes: usize,
    total_pss_kib: u64,
    vmm_pss_kib: u64,
    vmm_rss_kib: u64,
    monitor_pss_kib: u64,
    init_pss_kib: u64,
    other_pss_kib: u64,
    guest_touched_kib: u64,
    guest_pss_kib: u64,
    guest_huge_kib: u64,
}

/// One step: the containers after the `count`th start. Memory figures are
/// means per container over all `count` containers.
#[derive(Clone, Debug, Serialize)]
struct Step {
    system: &'static str,
    count: usize,
    /// The wall time of this start (`run --detach` until it returned).
    start_ms: f64,
    /// From the first start to the end of this step's measurement.
    elapsed_s: f64,
    per_container_pss_kib: f64,
    vmm_pss_kib: f64,
    vmm_rss_kib: f64,
    monitor_pss_kib: f64,
    init_pss_kib: f64,
    other_pss_kib: f64,
    guest_touched_kib: f64,
    guest_pss_kib: f64,
    /// Of the guest memory touched, in transparent huge pages.
    guest_huge_kib: f64,
    /// husk-vmm's PSS outside the guest RAM mapping.
    vmm_overhead_kib: f64,
    /// husk-vmm's RSS outside the guest RAM mapping.
    vmm_overhead_rss_kib: f64,
    processes_per_container: f64,
    /// The newest container's own PSS: shared pages are split among more
    /// containers as they come, so the mean drifts down.
    newest_pss_kib: u64,
    total_pss_kib: u64,
    mem_available_kib: u64,
    /// MemAvailable before the first start minus now.
    mem_available_drop_kib: u64,
    /// Growth of /proc/meminfo fields since before the first start, per
    /// container.
    meminfo_growth_kib: BTreeMap<&'static str, f64>,
}

/// A runtime's run, summed up.
#[derive(Debug, Serialize)]
struct End {
    system: &'static str,
    count: usize,
    /// "count" or "budget".
    stopped_by: &'static str,
    stop_detail: String,
    count_limit: usize,
    budget_kib: u64,
    mem_total_kib: u64,
    mem_available_start_kib: u64,
    mem_available_end_kib: u64,
    /// After every container was deleted.
    mem_available_after_delete_kib: u64,
    /// The VM's memory per container (husk); 0 for crun.
    vm_mem_mib: u64,
    delete_s: f64,
    how: &'static str,
}

/// The host before the first start.
struct Baseline {
    available_kib: u64,
    fields: BTreeMap<&'static str, u64>,
}

struct Fill {
    runtime: Runtime,
    binary: PathBuf,
    /// Bundles, upper layers, the runtime's root and logs.
    dir: PathBuf,
    lower: PathBuf,
}

impl Fill {
    fn name(&self) -> &'static str {
        self.runtime.name()
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn runtime_command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(self.root());
        command
    }

    fn run(&self, limits: Limits) -> Result<()> {
        std::fs::create_dir_all(self.root())?;
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let mem_total_kib = meminfo_kib(&meminfo, "MemTotal")?;
        let start_kib = meminfo_kib(&meminfo, "MemAvailable")?;
        let baseline = Baseline { available_kib: start_kib, fields: meminfo_fields(&meminfo)? };
        let budget_kib = limits.budget_mib * 1024;
        let floor_kib = start_kib.saturating_sub(budget_kib).max(RESERVE_KIB);
        let vmms_before = husk_vmms();
        eprintln!(
            "density: {}: up to {} containers or {} MiB (MemAvailable {} MiB, floor {} MiB)",
            self.name(),
            limits.count,
            limits.budget_mib,
            start_kib / 1024,
            floor_kib / 1024
        );
        let mut started: Vec<Started> = Vec::new();
        let filled = self.fill(limits, &baseline, floor_kib, &mut started);
        let end_kib = mem_available_kib()?;
        let deleting = Instant::now();
        let deleted = self.delete_all(&started, &vmms_before);
        let delete_s = deleting.elapsed().as_secs_f64();
        let (stopped_by, stop_detail) = match (filled, deleted) {
            (Ok(stop), Ok(())) => stop,
            (Err(err), Ok(())) => return Err(err),
            (Ok(_), Err(err)) => return Err(err.context("deleting the containers")),
            (Err(err), Err(deleted)) => return Err(err.context(format!("(and deleting: {deleted:#})"))),
        };
        // Freed guest memory returns to the host asynchronously (exiting
        // VMMs unmap it); give it a moment before reading.
        std::thread::sleep(Duration::from_secs(2));
        let end = End {
            system: self.name(),
            count: started.len(),
            stopped_by,
            stop_detail,
            count_limit: limits.count,
            budget_kib,
            mem_total_kib,
            mem_available_start_kib: start_kib,
            mem_available_end_kib: end_kib,
            mem_available_after_delete_kib: mem_available_kib()?,
            vm_mem_mib: started.first().map_or(0, |s| s.guest_kib / 1024),
            delete_s,
            how: "the runtime's own `run --detach` (no podman, no conmon), each bundle's rootfs an overlay on one \
                  busybox rootfs, process `sleep 100000`",
        };
        println!("DENSITY-END {}", serde_json::to_string(&end)?);
        eprintln!(
            "density: {}: {} containers ({}), deleted in {delete_s:.1} s, nothing left",
            self.name(),
            end.count,
            end.stop_detail
        );
        Ok(())
    }

    /// Starts containers until a limit; returns why it stopped.
    fn fill(
        &self,
        limits: Limits,
        baseline: &Baseline,
        floor_kib: u64,
        started: &mut Vec<Started>,
    ) -> Result<(&'static str, String)> {
        let first = Instant::now();
        let mut last_drop_kib = 0;
        for n in 1..=limits.count {
            let available = mem_available_kib()?;
            let drop_kib = baseline.available_kib.saturating_sub(available);
            let done = started.len();
            if done > 0 {
                // The next container will likely cost what the last did, or
                // the mean so far, whichever is more.
                let next = (drop_kib / done as u64).max(drop_kib.saturating_sub(last_drop_kib));
                if available.saturating_sub(next) < floor_kib {
                    return Ok((
                        "budget",
                        format!(
                            "stopped by the budget: MemAvailable {} MiB minus the next container's expected {} MiB \
                             would fall below the floor of {} MiB",
                            available / 1024,
                            next / 1024,
                            floor_kib / 1024
                        ),
                    ));
                }
            }
            last_drop_kib = drop_kib;
            let (container, start) = self.start(n)?;
            started.push(container);
            let step = self.measure(started, start, first.elapsed(), baseline)?;
            println!("DENSITY {}", serde_json::to_string(&step)?);
            eprintln!(
                "density: {} {n}/{}: start {:.0} ms, {:.1} MiB PSS per container, MemAvailable {} MiB",
                self.name(),
                limits.count,
                step.start_ms,
                step.per_container_pss_kib / 1024.0,
                step.mem_available_kib / 1024
            );
        }
        Ok(("count", format!("reached the count limit of {}", limits.count)))
    }

    /// A bundle for container `id`: config.json running `sleep 100000`,
    /// rootfs an overlay on the shared busybox rootfs.
    fn bundle(&self, id: &str) -> Result<PathBuf> {
        let bundle = self.dir.join(id);
        let (rootfs, upper, work) = (bundle.join("rootfs"), bundle.join("upper"), bundle.join("work"));
        for dir in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", self.lower.display(), upper.display(), work.display());
        let c = |s: &str| std::ffi::CString::new(s).context("a NUL in a mount argument");
        let (source, target, fstype, data) =
            (c("overlay")?, c(&rootfs.to_string_lossy())?, c("overlay")?, c(&options)?);
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call; the result is checked.
        let mounted =
            unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mounting overlay {options}"));
        }
        let mut spec = oci_spec::runtime::Spec::default();
        let process = spec.process_mut().as_mut().expect("the default spec has a process");
        process.set_args(Some(vec!["sleep".into(), "100000".into()]));
        process.set_terminal(Some(false));
        spec.root_mut().as_mut().expect("the default spec has a root").set_path("rootfs".into());
        spec.save(bundle.join("config.json")).context("writing the bundle's config.json")?;
        Ok(bundle)
    }

    /// Starts the `n`th container; returns it and how long `run` took.
    fn start(&self, n: usize) -> Result<(Started, Duration)> {
        let id = format!("{ID_PREFIX}{}-{n}", self.name());
        let bundle = self.bundle(&id)?;
        let log_path = self.dir.join(format!("{id}.log"));
        let log = File::create(&log_path)?;
        let mut command = self.runtime_command();
        command.args(["run", "--detach", "--bundle"]).arg(&bundle).arg(&id);
        // Output to a file, not a pipe: the detached container inherits it
        // and would hold a pipe open.
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        let began = Instant::now();
        let mut child = command.spawn().with_context(|| format!("starting {}", self.binary.display()))?;
        let (status, timed_out) = wait_with_deadline(&mut child, began + COMMAND_TIMEOUT)?;
        let took = began.elapsed();
        if timed_out || !status.success() {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "`{} run --detach` of {id} {} after {:.1} s (container {n}):\n{}",
                self.name(),
                if timed_out { "timed out".to_owned() } else { format!("failed ({status})") },
                took.as_secs_f64(),
                output.trim_end()
            );
        }
        let (roots, guest_kib) = self.recorded(&id)?;
        Ok((Started { id, bundle, roots, guest_kib }, took))
    }

    /// The host processes the runtime recorded for `id`, and the VM's
    /// memory (husk).
    fn recorded(&self, id: &str) -> Result<(Vec<i32>, u64)> {
        match self.runtime {
            Runtime::Husk => {
                let dir = husk_runtime::container_state::ContainerDir::new(&self.root(), id)?;
                let record = dir.load().with_context(|| format!("reading husk's record of {id}"))?;
                Ok((vec![record.monitor.pid, record.vm.vmm.pid], u64::from(record.vm.mem_mib) * 1024))
            }
            _ => {
                let output = self.runtime_command().args(["state", id]).stderr(Stdio::piped()).output()?;
                ensure!(
                    output.status.success(),
                    "`{} state {id}` failed: {}",
                    self.name(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                let state: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .with_context(|| format!("`{} state {id}` printed no JSON", self.name()))?;
                let pid = state["pid"].as_i64().filter(|&pid| pid > 0);
                let pid = pid.ok_or_else(|| anyhow!("`{} state {id}` has no pid: {state}", self.name()))?;
                ensure!(state["status"] == "running", "{id} is not running: {state}");
                Ok((vec![pid as i32], 0))
            }
        }
    }

    /// Measures every container started so far.
    fn measure(&self, started: &[Started], start: Duration, elapsed: Duration, baseline: &Baseline) -> Result<Step> {
        let all = processes();
        let mut each = Vec::with_capacity(started.len());
        for container in started {
            each.push(self.container_memory(&all, container)?);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let available = meminfo_kib(&meminfo, "MemAvailable")?;
        let n = started.len() as f64;
        let mean = |f: fn(&ContainerMemory) -> u64| each.iter().map(f).sum::<u64>() as f64 / n;
        let vmm_pss = mean(|c| c.vmm_pss_kib);
        let guest_pss = mean(|c| c.guest_pss_kib);
        Ok(Step {
            system: self.name(),
            count: started.len(),
            start_ms: start.as_secs_f64() * 1e3,
            elapsed_s: elapsed.as_secs_f64(),
            per_container_pss_kib: mean(|c| c.total_pss_kib),
            vmm_pss_kib: vmm_pss,
            vmm_rss_kib: mean(|c| c.vmm_rss_kib),
            monitor_pss_kib: mean(|c| c.monitor_pss_kib),
            init_pss_kib: mean(|c| c.init_pss_kib),
            other_pss_kib: mean(|c| c.other_pss_kib),
            guest_touched_kib: mean(|c| c.guest_touched_kib),
            guest_pss_kib: guest_pss,
            guest_huge_kib: mean(|c| c.guest_huge_kib),
            vmm_overhead_kib: vmm_pss - guest_pss,
            vmm_overhead_rss_kib: mean(|c| c.vmm_rss_kib) - mean(|c| c.guest_touched_kib),
            processes_per_container: mean(|c| c.processes as u64),
            newest_pss_kib: each.last().map_or(0, |c| c.total_pss_kib),
            total_pss_kib: each.iter().map(|c| c.total_pss_kib).sum(),
            mem_available_kib: available,
            mem_available_drop_kib: baseline.available_kib.saturating_sub(available),
            meminfo_growth_kib: growth_per_container(&baseline.fields, &meminfo_fields(&meminfo)?, started.len()),
        })
    }

    fn container_memory(&self, all: &[Process], container: &Started) -> Result<ContainerMemory> {
        let members = members(all, &container.id, &container.roots);
        let mut memory = ContainerMemory { processes: members.len(), ..Default::default() };
        for process in &members {
            let role = role_of(process, &container.roots, self.runtime);
            let read = |file: &str| {
                std::fs::read_to_string(format!("/proc/{}/{file}", process.pid))
                    .with_context(|| format!("reading /proc/{}/{file} (`{}`)", process.pid, process.cmdline))
            };
            let usage = if role == Role::Vmm {
                let split = split_guest(&parse_smaps(&read("smaps")?)?, container.guest_kib)
                    .with_context(|| format!("husk-vmm {} of {}", process.pid, container.id))?;
                memory.guest_touched_kib += split.guest.rss_kib;
                memory.guest_pss_kib += split.guest.pss_kib;
                memory.guest_huge_kib += split.guest_huge_kib;
                memory.vmm_rss_kib += split.total.rss_kib;
                split.total
            } else {
                parse_smaps_rollup(&read("smaps_rollup")?)
                    .with_context(|| format!("/proc/{}/smaps_rollup", process.pid))?
            };
            memory.total_pss_kib += usage.pss_kib;
            *match role {
                Role::Vmm => &mut memory.vmm_pss_kib,
                Role::Monitor => &mut memory.monitor_pss_kib,
                Role::Init => &mut memory.init_pss_kib,
                Role::Other => &mut memory.other_pss_kib,
            } += usage.pss_kib;
        }
        let expected: &[Role] = match self.runtime {
            Runtime::Husk => &[Role::Vmm, Role::Monitor],
            _ => &[Role::Init],
        };
        for role in expected {
            ensure!(
                members.iter().any(|p| role_of(p, &container.roots, self.runtime) == *role),
                "container {} has no {role:?} process (of its recorded {:?}): it stopped while idle? Its processes: \
                 {members:#?}",
                container.id,
                container.roots
            );
        }
        Ok(memory)
    }

    /// Deletes every container (newest first), then checks that none of
    /// their processes, records, mounts or bundles is left.
    fn delete_all(&self, started: &[Started], vmms_before: &BTreeSet<i32>) -> Result<()> {
        let all = processes();
        let mut owned: Vec<Process> = Vec::new();
        for container in started {
            owned.extend(members(&all, &container.id, &container.roots));
        }
        let mut failures = Vec::new();
        for container in started.iter().rev() {
            let mut command = self.runtime_command();
            command.args(["delete", "--force", &container.id]);
            match super::run(&mut command, COMMAND_TIMEOUT) {
                Ok(out) if out.code == Some(0) && !out.timed_out => {}
                Ok(out) => failures.push(out.describe()),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let leftovers = loop {
            let mut left: Vec<String> = Vec::new();
            left.extend(owned.iter().filter(|p| p.alive()).map(|p| format!("process {} `{}`", p.pid, p.cmdline)));
            left.extend(
                processes()
                    .into_iter()
                    .filter(|p| started.iter().any(|c| p.cmdline.split(' ').any(|arg| arg == c.id)))
                    .map(|p| format!("process {} `{}`", p.pid, p.cmdline)),
            );
            left.extend(
                husk_vmms().difference(vmms_before).map(|pid| format!("husk-vmm {pid} started during the run")),
            );
            left.extend(
                super::dir_names(&self.root()).into_iter().map(|id| format!("{}'s record of {id}", self.name())),
            );
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        for container in started {
            unmount_below(&container.bundle)?;
            std::fs::remove_dir_all(&container.bundle)
                .with_context(|| format!("removing the bundle {}", container.bundle.display()))?;
        }
        ensure!(failures.is_empty(), "deleting failed:\n{}", failures.join("\n"));
        ensure!(leftovers.is_empty(), "deleting every container left, 60 s later:\n  {}", leftovers.join("\n  "));
        println!(
            "ok: {} delete --force removed all {} containers: no process, husk-vmm, record or mount left",
            self.name(),
            started.len()
        );
        Ok(())
    }
}

fn husk_vmms() -> BTreeSet<i32> {
    processes().iter().filter(|p| p.is_husk_vmm()).map(|p| p.pid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 00:1f 1234                       /usr/local/bin/husk-vmm
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 400 kB
Pss_Anon:              0 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0020000000 rw-p 00000000 00:00 0 
Size:             524288 kB
Rss:               61440 kB
Pss:               61440 kB
AnonHugePages:     49152 kB
VmFlags: rd wr mr mw me ac hg
7f1000000000-7f1000100000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Rss:                 512 kB
Pss:                 512 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  20 kB
Pss:                  20 kB
";

    #[test]
    fn smaps_mappings_are_parsed() {
        let mappings = parse_smaps(SMAPS).unwrap();
        assert_eq!(mappings.len(), 4);
        assert_eq!(
            mappings[0],
            Mapping {
                path: "/usr/local/bin/husk-vmm".into(),
                size_kib: 1024,
                rss_kib: 800,
                pss_kib: 400,
                anon_huge_kib: 0
            }
        );
        assert_eq!(mappings[1].path, "");
        assert_eq!(mappings[1].size_kib, 524288);
        assert_eq!(mappings[2].path, "[heap]");
    }

    #[test]
    fn the_guest_mapping_is_split_off() {
        let split = split_guest(&parse_smaps(SMAPS).unwrap(), 512 * 1024).unwrap();
        assert_eq!(split.guest, MemUse { rss_kib: 61440, pss_kib: 61440 });
        assert_eq!(split.guest_huge_kib, 49152);
        assert_eq!(split.total, MemUse { rss_kib: 800 + 61440 + 512 + 20, pss_kib: 400 + 61440 + 512 + 20 });
        // A file mapping of the guest's size is not guest RAM, and a VM of
        // another size has no mapping: both are errors naming what is there.
        let err = split_guest(&parse_smaps(SMAPS).unwrap(), 256 * 1024).unwrap_err().to_string();
        assert!(err.contains("found 0") && err.contains("524288 KiB"), "{err}");
        let twice = format!("{SMAPS}{}", SMAPS.lines().skip(7).take(6).collect::<Vec<_>>().join("\n"));
        let err = split_guest(&parse_smaps(&twice).unwrap(), 512 * 1024).unwrap_err().to_string();
        assert!(err.contains("found 2"), "{err}");
    }

    #[test]
    fn the_memfd_guest_mapping_counts_as_guest_ram() {
        let memfd =
            SMAPS.replace("rw-p 00000000 00:00 0 \n", "rw-s 00000000 00:01 77   /memfd:husk-guest-memory (deleted)\n");
        assert_ne!(memfd, SMAPS);
        let split = split_guest(&parse_smaps(&memfd).unwrap(), 512 * 1024).unwrap();
        assert_eq!(split.guest.rss_kib, 61440);
    }

    #[test]
    fn bad_smaps_is_an_error() {
        assert!(parse_smaps("Size: 4 kB\n").unwrap_err().to_string().contains("before any mapping"));
        let no_pss = "00400000-00401000 r--p 00000000 08:01 1 /bin/x\nSize: 4 kB\nRss: 4 kB\n";
        assert!(parse_smaps(no_pss).unwrap_err().to_string().contains("lacks"));
        let garbled = "00400000-00401000 r--p 00000000 08:01 1 /bin/x\nSize: four kB\nRss: 4 kB\nPss: 4 kB\n";
        assert!(format!("{:#}", parse_smaps(garbled).unwrap_err()).contains("Size: expected"));
    }

    #[test]
    fn smaps_rollup_totals() {
        let rollup = "\
00400000-7ffd00021000 ---p 00000000 00:00 0                          [rollup]
Rss:                3000 kB
Pss:                1500 kB
Pss_Dirty:          1000 kB
Pss_Anon:            900 kB
Shared_Clean:       1800 kB
";
        assert_eq!(parse_smaps_rollup(rollup).unwrap(), MemUse { rss_kib: 3000, pss_kib: 1500 });
        assert!(parse_smaps_rollup("Rss: 3 kB\n").unwrap_err().to_string().contains("no Pss"));
    }

    #[test]
    fn this_kernels_smaps_parse() {
        let mappings = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").unwrap()).unwrap();
        assert!(mappings.iter().any(|m| m.path == "[stack]" && m.rss_kib > 0), "{mappings:?}");
        let rollup = parse_smaps_rollup(&std::fs::read_to_string("/proc/self/smaps_rollup").unwrap()).unwrap();
        assert!(rollup.rss_kib >= rollup.pss_kib && rollup.pss_kib > 0, "{rollup:?}");
        assert!(mem_available_kib().unwrap() > 0);
    }

    #[test]
    fn meminfo_values_and_growth() {
        let meminfo = "MemTotal:        4000000 kB\nMemFree:         1000 kB\nMemAvailable:    3000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemAvailable").unwrap(), 3_000_000);
        assert_eq!(meminfo_kib(meminfo, "MemTotal").unwrap(), 4_000_000);
        assert!(meminfo_kib(meminfo, "Cached").is_err());
        let before = meminfo_fields("Shmem: 100 kB\nSlab: 1000 kB\nPageTables: 50 kB\nMemFree: 1 kB\n").unwrap();
        assert_eq!(before.len(), 3);
        let now = meminfo_fields("Shmem: 700 kB\nSlab: 900 kB\nPageTables: 50 kB\n").unwrap();
        let growth = growth_per_container(&before, &now, 2);
        assert_eq!(growth, BTreeMap::from([("Shmem", 300.0), ("Slab", -50.0), ("PageTables", 0.0)]));
        assert!(meminfo_fields("Slab: lots\n").is_err());
    }

    fn process(pid: i32, ppid: i32, cmdline: &str) -> Process {
        Process { pid, ppid, start: 1, cmdline: cmdline.into() }
    }

    #[test]
    fn members_are_the_roots_the_id_naming_and_their_descendants() {
        let all = vec![
            process(1, 0, "/sbin/init"),
            process(10, 1, "/x/husk __monitor-init hes-density-husk-1"),
            process(11, 10, "/x/husk-vmm --api-sock /r/hes-density-husk-1/vmm.sock --id hes-density-husk-1"),
            process(20, 1, "/x/husk __monitor-init hes-density-husk-10"),
            process(21, 20, "/x/husk-vmm --api-sock /r/hes-density-husk-10/vmm.sock --id hes-density-husk-10"),
            process(22, 21, "helper of 10"),
            process(30, 1, "sleep 100000"),
            process(31, 30, "child of crun's init"),
        ];
        let pids = |members: Vec<Process>| members.iter().map(|p| p.pid).collect::<Vec<_>>();
        // `…-1` is a prefix of `…-10` but not the same argument.
        assert_eq!(pids(members(&all, "hes-density-husk-1", &[])), [10, 11]);
        assert_eq!(pids(members(&all, "hes-density-husk-10", &[20, 21])), [20, 21, 22]);
        // crun's init names nothing; the recorded pid brings it, with its
        // children. A recorded pid that is gone is skipped.
        assert_eq!(pids(members(&all, "hes-density-crun-1", &[30, 99])), [30, 31]);
        let roles: Vec<Role> = all.iter().map(|p| role_of(p, &[30], Runtime::Crun)).collect();
        assert_eq!(roles[1..4], [Role::Monitor, Role::Vmm, Role::Monitor]);
        assert_eq!(roles[6..8], [Role::Init, Role::Other]);
        assert_eq!(role_of(&all[6], &[30], Runtime::Husk), Role::Other);
    }
}
