//! What husk-vmm's hardening costs at start-up: seccomp filters and the
//! built-in jail, each on and off, the four combinations interleaved.
//!
//! - Here: process start → the API's first answer, wall and CPU time (the
//!   jail is entered and the API thread's filter installed before it
//!   answers).
//! - In the test host: InstanceStart → agent ready (the VMM's boot timer;
//!   the event loop's and vCPUs' filters are installed in it), the whole
//!   run, and the VMM's CPU time over the run.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_tests::paths;
use husk_tests::testhost::TestHost;

use crate::stats::{markdown_table, Series};
use crate::vmm::{cpu_time, husk_boot, number_after};

/// The combinations, as tests/testhost/vmm-api-boot.sh's HARDENING names
/// them, with their husk-vmm flags for the local runs.
const MODES: [(&str, &str); 4] = [
    ("none", "neither (--no-seccomp, no jail)"),
    ("default", "seccomp (the default)"),
    ("no-seccomp", "jail only"),
    ("jail", "seccomp + jail (the OCI runtime's choice)"),
];

fn flags(mode: &str, jail: &Path) -> Vec<String> {
    let jail_flags = || vec!["--jail".to_owned(), jail.to_string_lossy().into_owned()];
    match mode {
        "none" => vec!["--no-seccomp".into()],
        "default" => Vec::new(),
        "no-seccomp" => [vec!["--no-seccomp".to_owned()], jail_flags()].concat(),
        _ => jail_flags(),
    }
}

fn label(mode: &str) -> &'static str {
    MODES.iter().find(|(m, _)| *m == mode).map(|(_, l)| *l).unwrap_or("?")
}

/// GET / answered with 200: the jail entered and the API thread serving.
fn answered(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else { return false };
    if stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn local_startup(vmm: &Path, runs: usize, wall: &mut [Series; 4], cpu: &mut [Series; 4]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("husk-bench-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for run in 0..runs {
        // Rotate the order so no mode always runs first.
        for k in 0..MODES.len() {
            let index = (run + k) % MODES.len();
            let mode = MODES[index].0;
            let socket = dir.join("api.sock");
            let _ = std::fs::remove_file(&socket);
            let jail = dir.join(format!("jail-{run}-{mode}"));
            std::fs::create_dir_all(&jail)?;
            std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755))?;
            let started = Instant::now();
            let mut child = Command::new(vmm)
                .arg("--api-sock")
                .arg(&socket)
                .args(flags(mode, &jail))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting husk-vmm")?;
            while !answered(&socket) {
                if started.elapsed() > Duration::from_secs(10) || child.try_wait()?.is_some() {
                    let _ = child.kill();
                    let output = child.wait_with_output()?;
                    bail!("husk-vmm ({mode}) never answered: {}", String::from_utf8_lossy(&output.stderr));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            wall[index].push(started.elapsed().as_secs_f64() * 1e3);
            cpu[index].push(cpu_time(child.id()).as_secs_f64() * 1e3);
            child.kill()?;
            child.wait()?;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

pub fn run(out: &Path, runs: usize, socket_runs: usize) -> Result<()> {
    let vmm = crate::release_vmm()?;
    let series = |what: &str, unit: &str| -> [Series; 4] {
        MODES.map(|(mode, _)| Series::new(&format!("{what}: {}", label(mode)), unit))
    };
    let mut api_wall = series("process start → API answers (wall)", "ms");
    let mut api_cpu = series("process start → API answers (CPU)", "ms");
    eprintln!("husk-bench hardening: {socket_runs} start-ups per mode here");
    local_startup(&vmm, socket_runs, &mut api_wall, &mut api_cpu)?;

    let runner = paths::repo_dir().join("target/debug/husk-testhost");
    let host = TestHost::shared(&runner)?;
    let info = host.info()?;
    let mut ready = series("InstanceStart → agent ready (boot timer)", "ms");
    let mut whole = series("whole run (start, API, boot, power-off)", "ms");
    let mut vmm_cpu = series("husk-vmm CPU time over the whole run", "ms");
    for run in 0..runs {
        for k in 0..MODES.len() {
            let index = (run + k) % MODES.len();
            let mode = MODES[index].0;
            eprintln!("husk-bench hardening: boot {}/{runs}, {}", run + 1, label(mode));
            let output = husk_boot(&host, &vmm, "wait", "husk.ready_action=poweroff", mode)?;
            let text = output.stdout_text();
            ready[index].push(number_after(&text, "Guest-boot-time =").context("no boot-timer log")? / 1e3);
            whole[index].push(output.elapsed.as_secs_f64() * 1e3);
            vmm_cpu[index].push(number_after(&text, "vmm_cpu_ms=").context("no vmm_cpu_ms line")?);
        }
    }

    let all: Vec<&Series> = [&api_wall, &api_cpu, &ready, &whole, &vmm_cpu].into_iter().flatten().collect();
    let mut table = String::new();
    writeln!(table, "# What seccomp and the jail cost husk-vmm at start-up\n")?;
    writeln!(
        table,
        "Local KVM: {} (API start-ups, {socket_runs} per mode). Test host: {:?} (kernel {}, KVM {}), {runs} boots \
         per mode of the project's kernel + initramfs (1 vCPU, 256 MiB); the four modes interleaved, release \
         husk-vmm. Times in the nested, software-emulated test host are far above hardware: read the differences \
         between modes.\n",
        husk_tests::kvm::KvmFlavour::detect().name(),
        host.mode(),
        info.kernel,
        info.kvm
    )?;
    table.push_str(&markdown_table(all.iter().copied(), 2));
    let diff = |s: &[Series; 4], i: usize| s[i].median() - s[0].median();
    writeln!(
        table,
        "\nAdded to the unhardened median: API start-up (wall) seccomp {:+.2} ms, jail {:+.2} ms, both {:+.2} ms; \
         InstanceStart → ready seccomp {:+.1} ms, jail {:+.1} ms, both {:+.1} ms.",
        diff(&api_wall, 1),
        diff(&api_wall, 2),
        diff(&api_wall, 3),
        diff(&ready, 1),
        diff(&ready, 2),
        diff(&ready, 3)
    )?;
    std::fs::write(out.join("hardening.md"), &table)?;
    std::fs::write(out.join("hardening.json"), serde_json::to_string_pretty(&all)?)?;
    print!("{table}");
    eprintln!("husk-bench hardening: wrote {}", out.join("hardening.md").display());
    Ok(())
}
