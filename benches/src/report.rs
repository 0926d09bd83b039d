//! What a benchmark run leaves beside its tables: every sample as CSV and
//! JSON, and a record of the machine it ran on.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use husk_tests::kvm::KvmFlavour;
use husk_tests::protocol::{HostInfo, RunRequest};
use husk_tests::testhost::{Mode, TestHost};
use serde::Serialize;

use crate::stats::Series;

/// A series in samples.json: its samples and their summary.
#[derive(Serialize)]
struct SeriesRecord<'a> {
    group: &'a str,
    system: &'a str,
    measurement: &'a str,
    unit: &'a str,
    /// null when there are no samples.
    median: f64,
    p90: f64,
    samples: &'a [f64],
}

/// Writes `samples.csv` (`group,system,measurement,unit,run,value`, one
/// row per sample, `run` counting from 1) and `samples.json` (each series
/// with its samples, median and p90) into `out`. Values are written in
/// Rust's shortest form that reads back exactly; a NaN sample (a
/// measurement that failed to parse) stays visible: NaN in the CSV, null
/// in the JSON.
pub fn write_samples(out: &Path, series: &[&Series]) -> Result<()> {
    if series.is_empty() {
        bail!("no series to write to {}", out.display());
    }
    let csv_path = out.join("samples.csv");
    let mut csv = csv::Writer::from_path(&csv_path).with_context(|| format!("creating {}", csv_path.display()))?;
    csv.write_record(["group", "system", "measurement", "unit", "run", "value"])?;
    for s in series {
        for (run, value) in s.samples.iter().enumerate() {
            let (run, value) = ((run + 1).to_string(), value.to_string());
            csv.write_record([s.group.as_str(), &s.system, &s.name, &s.unit, &run, &value])?;
        }
    }
    csv.flush().with_context(|| format!("writing {}", csv_path.display()))?;

    let records: Vec<SeriesRecord> = series
        .iter()
        .map(|s| SeriesRecord {
            group: &s.group,
            system: &s.system,
            measurement: &s.name,
            unit: &s.unit,
            median: s.median(),
            p90: s.p90(),
            samples: &s.samples,
        })
        .collect();
    let json_path = out.join("samples.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&records)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}

/// The machine a benchmark run measured on, and the versions measured.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: usize,
    pub memory_mib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// This machine's /dev/kvm: hardware, kvm-pvm, unknown or absent.
    pub kvm: String,
    /// `git rev-parse --short HEAD`, with "-dirty" when tracked files differ.
    pub husk_commit: String,
    pub rustc: String,
    /// `husk-vmm --version` of the release build, or "not built".
    pub husk_vmm: String,
    /// Where the microVMs ran, when a test host was used.
    pub test_host: Option<TestHostRecord>,
}

/// The test host the microVMs, podman and the OCI runtimes ran in.
#[derive(Clone, Debug, Serialize)]
pub struct TestHostRecord {
    /// "direct" (this machine, hardware KVM) or "nested" (the QEMU TCG test host).
    pub mode: String,
    pub kernel: String,
    pub kvm: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// (tool, first line of its `--version`, or "not installed"), in the
    /// order of [`TOOLS`]; a JSON object.
    #[serde(serialize_with = "as_object")]
    pub versions: Vec<(String, String)>,
}

fn as_object<S: serde::Serializer>(pairs: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The tools whose versions a test host record lists, with the command
/// that prints the version.
const TOOLS: [(&str, &str); 6] = [
    ("podman", "podman --version"),
    ("conmon", "conmon --version"),
    ("crun", "crun --version"),
    ("runc", "runc --version"),
    ("qemu-system-x86_64", "qemu-system-x86_64 --version"),
    ("containerd", "containerd --version"),
];

/// The field after `label:` on the first line that has it (/proc/cpuinfo,
/// /proc/meminfo), trimmed.
fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines().find_map(|l| Some(l.strip_prefix(label)?.trim_start().strip_prefix(':')?.trim()))
}

fn mem_total_mib(meminfo: &str) -> Option<u64> {
    Some(field(meminfo, "MemTotal")?.strip_suffix("kB")?.trim().parse::<u64>().ok()? / 1024)
}

/// The first line of a command's standard output; failing to run it or a
/// non-zero exit is an error with its standard error.
fn first_line(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().trim().to_owned())
}

fn husk_commit(repo: &Path) -> Result<String> {
    let repo = repo.to_string_lossy();
    let commit = first_line("git", &["-C", &repo, "rev-parse", "--short", "HEAD"])?;
    let status = first_line("git", &["-C", &repo, "status", "--porcelain", "--untracked-files=no"])?;
    Ok(if status.is_empty() { commit } else { format!("{commit}-dirty") })
}

/// One shell script run in the test host: its CPUs, memory and each tool's
/// version as `key=value` lines.
fn test_host_script() -> String {
    let mut script = String::from(
        "echo \"cpus=$(nproc)\"; echo \"memory_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)\"; \
         v() { name=$1; shift; if command -v \"$1\" >/dev/null 2>&1; then \
         echo \"$name=$(\"$@\" 2>&1 | head -n 1)\"; else echo \"$name=not installed\"; fi; }; ",
    );
    for (name, command) in TOOLS {
        script.push_str(&format!("v {name} {command}; "));
    }
    script
}

/// The record of a test host in `mode` with `info` from
/// [`test_host_script`]'s output.
fn parse_test_host(stdout: &str, mode: &str, info: HostInfo) -> Result<TestHostRecord> {
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("the test host's report has no {key}= line:\n{stdout}"))
    };
    let cpus = value("cpus")?.trim().parse().with_context(|| format!("the test host's cpus= line:\n{stdout}"))?;
    let memory_kib: u64 =
        value("memory_kib")?.trim().parse().with_context(|| format!("the test host's memory_kib= line:\n{stdout}"))?;
    let versions =
        TOOLS.iter().map(|(name, _)| Ok((name.to_string(), value(name)?.trim().to_owned()))).collect::<Result<_>>()?;
    Ok(TestHostRecord {
        mode: mode.into(),
        kernel: info.kernel,
        kvm: info.kvm,
        cpus,
        memory_mib: memory_kib / 1024,
        versions,
    })
}

fn test_host_record(host: &TestHost) -> Result<TestHostRecord> {
    let info = host.info()?;
    let request =
        RunRequest { argv: vec!["sh".into(), "-c".into(), test_host_script()], timeout_secs: 60, ..Default::default() };
    let output = host.run(&request)?;
    if !output.report.success() {
        bail!("the test host's version report failed ({:?}): {}", output.report, output.stderr_text());
    }
    let mode = match host.mode() {
        Mode::Direct => "direct",
        Mode::Nested => "nested",
    };
    parse_test_host(&output.stdout_text(), mode, info)
}

/// Records this machine and, given the test host the benchmarks ran in,
/// that host and the engines' versions in it.
pub fn machine(host: Option<&TestHost>) -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let local = husk_tests::runner::host_info();
    let husk_vmm = match crate::release_vmm() {
        Ok(vmm) => first_line(&vmm.to_string_lossy(), &["--version"])?,
        Err(_) => "not built".into(),
    };
    Ok(Machine {
        cpu_model: field(&cpuinfo, "model name").unwrap_or("unknown").to_owned(),
        cpus: cpuinfo.lines().filter(|l| field(l, "processor").is_some()).count(),
        memory_mib: mem_total_mib(&meminfo).context("no MemTotal in /proc/meminfo")?,
        kernel: local.kernel,
        kvm: local.kvm,
        husk_commit: husk_commit(&husk_tests::paths::repo_dir())?,
        rustc: first_line("rustc", &["--version"])?,
        husk_vmm,
        test_host: host.map(test_host_record).transpose()?,
    })
}

impl Machine {
    /// Where the microVMs ran, in one sentence.
    pub fn where_vms_ran(&self) -> String {
        match &self.test_host {
            Some(h) if h.mode == "direct" => {
                "The microVMs ran directly on this machine's hardware KVM: times are real.".into()
            }
            Some(_) => "The microVMs ran in the nested test host, a software-emulated QEMU (TCG) machine on this one, \
                        so absolute times are emulated: read the ratios."
                .into(),
            None if self.kvm == KvmFlavour::Hardware.name() => {
                "No test host was used; this machine has hardware KVM.".into()
            }
            None => format!(
                "No test host was used; this machine's KVM is {}, on which a stock Linux guest does not boot.",
                self.kvm
            ),
        }
    }

    /// The record as a markdown section.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "## Machine\n\n{}\n\n| | |\n|---|---|\n| CPU | {} ({} logical CPUs) |\n| memory | {} MiB |\n\
             | kernel | {} |\n| KVM | {} |\n| husk commit | {} |\n| rustc | {} |\n| husk-vmm | {} |\n",
            self.where_vms_ran(),
            self.cpu_model,
            self.cpus,
            self.memory_mib,
            self.kernel,
            self.kvm,
            self.husk_commit,
            self.rustc,
            self.husk_vmm
        );
        if let Some(h) = &self.test_host {
            md.push_str(&format!(
                "| test host | {} ({} CPUs, {} MiB) |\n| test host kernel | {} |\n| test host KVM | {} |\n",
                h.mode, h.cpus, h.memory_mib, h.kernel, h.kvm
            ));
            for (tool, version) in &h.versions {
                md.push_str(&format!("| {tool} | {} |\n", version.replace('|', "\\|")));
            }
        }
        md
    }
}

/// Writes `machine.json` into `out`.
pub fn write_machine(out: &Path, m: &Machine) -> Result<()> {
    let path = out.join("machine.json");
    std::fs::write(&path, serde_json::to_string_pretty(m)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::temp_dir;

    #[test]
    fn samples_round_trip_through_csv_and_json() {
        let dir = temp_dir("samples");
        let mut a = Series::of("create → exit, \"/bin/true\"", "husk, release", "ms");
        a.push(12.5);
        a.push(0.1 + 0.2);
        a.push(1e-7);
        let mut b = Series::new("API ready, wall", "ms");
        b.push(3.0);
        let mut failed = Series::new("unparsed", "ms");
        failed.push(f64::NAN);
        write_samples(&dir, &[&a, &b, &failed]).unwrap();

        let text = std::fs::read_to_string(dir.join("samples.csv")).unwrap();
        assert!(text.starts_with("group,system,measurement,unit,run,value\n"));
        // Commas and quotes are quoted, arrows pass through.
        assert!(text.contains("\"create → exit, \"\"/bin/true\"\"\",\"husk, release\","), "{text}");
        let mut reader = csv::Reader::from_path(dir.join("samples.csv")).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let mut expected = Vec::new();
        for s in [&a, &b, &failed] {
            expected.extend(s.samples.iter().enumerate().map(|(i, v)| (s, i + 1, *v)));
        }
        assert_eq!(rows.len(), expected.len());
        for (row, (s, run, value)) in rows.iter().zip(expected) {
            assert_eq!(&row[0], s.group);
            assert_eq!(&row[1], s.system);
            assert_eq!(&row[2], s.name);
            assert_eq!(&row[3], s.unit);
            assert_eq!(row[4].parse::<usize>().unwrap(), run);
            let read: f64 = row[5].parse().unwrap();
            assert!(read == value || (read.is_nan() && value.is_nan()), "{read} read back as {value}");
        }

        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("samples.json")).unwrap()).unwrap();
        assert_eq!(json[0]["measurement"], a.name.as_str());
        assert_eq!(json[0]["group"], a.group.as_str());
        assert_eq!(json[0]["system"], "husk, release");
        assert_eq!(json[0]["samples"][1].as_f64().unwrap(), 0.1 + 0.2);
        assert_eq!(json[0]["median"].as_f64().unwrap(), 0.1 + 0.2);
        assert_eq!(json[0]["p90"].as_f64().unwrap(), 12.5);
        assert_eq!(json[1]["group"], "");
        assert_eq!(json[1]["median"].as_f64().unwrap(), 3.0);
        assert!(json[2]["samples"][0].is_null() && json[2]["median"].is_null());
        assert!(text.ends_with(",unparsed,ms,1,NaN\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_series_is_an_error() {
        let dir = temp_dir("none");
        assert!(write_samples(&dir, &[]).unwrap_err().to_string().starts_with("no series to write"));
        assert!(!dir.join("samples.csv").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_host_report_parses_and_tolerates_missing_tools() {
        let stdout = "cpus=2\nmemory_kib=4020736\npodman=podman version 4.3.1\nconmon=conmon version 2.1.6\n\
                      crun=crun version 1.8.1\nruncx=a longer key\nrunc=not installed\n\
                      qemu-system-x86_64=QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\n\
                      containerd=containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1\n";
        let info = HostInfo { kernel: "6.12.38".into(), uptime_secs: 9.0, kvm: "hardware".into() };
        let record = parse_test_host(stdout, "nested", info.clone()).unwrap();
        assert_eq!(
            (record.mode.as_str(), record.kernel.as_str(), record.kvm.as_str()),
            ("nested", "6.12.38", "hardware")
        );
        assert_eq!((record.cpus, record.memory_mib), (2, 3926));
        let versions = record.versions;
        assert_eq!(versions[2], ("crun".into(), "crun version 1.8.1".into()));
        assert_eq!(versions[3], ("runc".into(), "not installed".into()));
        assert_eq!(versions.len(), TOOLS.len());
        let err = parse_test_host("cpus=2\nmemory_kib=1024\n", "nested", info).unwrap_err().to_string();
        assert!(err.contains("no podman= line"), "{err}");
    }

    #[test]
    fn the_script_reports_every_tool_or_its_absence() {
        // Run here: whichever tools this machine lacks must come out as
        // "not installed", the others with a version line.
        let output = Command::new("sh").args(["-c", &test_host_script()]).output().unwrap();
        assert!(output.status.success());
        let record = parse_test_host(&String::from_utf8_lossy(&output.stdout), "direct", HostInfo::default()).unwrap();
        assert!(record.cpus >= 1 && record.memory_mib > 0);
        for (tool, version) in record.versions {
            let installed = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
            if installed.status.success() {
                assert_ne!(version, "not installed", "{tool}");
                assert!(!version.is_empty(), "{tool}");
            } else {
                assert_eq!(version, "not installed", "{tool}");
            }
        }
    }

    #[test]
    fn machine_record_of_this_machine() {
        let mut m = machine(None).unwrap();
        assert!(m.cpus >= 1 && m.memory_mib > 0);
        assert_eq!(m.kernel, std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim());
        assert_eq!(m.kvm, KvmFlavour::detect().name());
        assert!(m.rustc.starts_with("rustc "), "{}", m.rustc);
        assert!(m.husk_commit.len() >= 7, "{}", m.husk_commit);
        assert!(m.husk_vmm == "not built" || m.husk_vmm.starts_with("husk-vmm "), "{}", m.husk_vmm);
        let md = m.markdown();
        assert!(md.contains(&format!("| kernel | {} |", m.kernel)), "{md}");
        assert!(md.contains("No test host was used"), "{md}");
        let dir = temp_dir("machine");
        write_machine(&dir, &m).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("machine.json")).unwrap()).unwrap();
        assert_eq!(json["kvm"], m.kvm.as_str());
        assert!(json["test_host"].is_null());
        m.test_host = Some(TestHostRecord {
            mode: "nested".into(),
            kernel: "6.12".into(),
            kvm: "hardware".into(),
            cpus: 2,
            memory_mib: 4096,
            versions: vec![("podman".into(), "podman version 4.3.1".into()), ("runc".into(), "not installed".into())],
        });
        write_machine(&dir, &m).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("machine.json")).unwrap()).unwrap();
        assert_eq!(json["test_host"]["versions"]["runc"], "not installed");
        assert_eq!(json["test_host"]["versions"]["podman"], "podman version 4.3.1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn where_the_vms_ran_follows_the_test_host() {
        let host = |mode: &str| TestHostRecord {
            mode: mode.into(),
            kernel: "6.12".into(),
            kvm: "hardware".into(),
            cpus: 2,
            memory_mib: 4096,
            versions: vec![("crun".into(), "crun version 1.8.1".into())],
        };
        let mut m = machine(None).unwrap();
        m.test_host = Some(host("nested"));
        assert!(m.where_vms_ran().contains("software-emulated"));
        assert!(m.markdown().contains("| crun | crun version 1.8.1 |"));
        m.test_host = Some(host("direct"));
        assert!(m.where_vms_ran().contains("directly on this machine's hardware KVM"));
    }
}
