//! `husk-testhost`: the test host from the command line.
//!
//!   husk-testhost up                  boot (or reuse) the test host, print what it is
//!   husk-testhost run [OPTS] -- CMD…  run CMD there, stream its output, exit with its status
//!   husk-testhost boot-guest [OPTS]   boot husk's guest in a microVM there, show its console
//!   husk-testhost down                stop the nested host of this checkout
//!   husk-testhost serve …             the runner, inside the nested host (started by its init)

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use husk_api::agent_console::ReadyLine;
use husk_tests::protocol::{Frame, RunRequest};
use husk_tests::reference_vmm::{husk_vmm, qemu_microvm};
use husk_tests::testhost::{self, TestHost};

#[derive(Parser)]
#[command(version, about = "The machine husk's integration tests boot microVMs in")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the test host (or reuse the running one) and describe it.
    Up,
    /// Run a program in the test host; exits with its status.
    Run {
        /// Kill the program after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Working directory inside the test host (default: the current one).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// KEY=VALUE added to the program's environment; repeatable.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        #[arg(required = true, trailing_var_arg = true)]
        argv: Vec<String>,
    },
    /// Boot husk's guest (target/husk kernel + initramfs) to the agent's
    /// ready line under KVM in the test host, with QEMU's microvm as the VMM.
    BootGuest {
        /// Which kernel image to boot: vmlinux (PVH entry) or bzImage.
        #[arg(long, default_value = "vmlinux", value_parser = ["vmlinux", "bzImage"])]
        kernel: String,
        /// Extra kernel command line (e.g. `loglevel=7` for the whole boot log).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// The VMM: husk (husk-vmm, the workspace's debug build unless
        /// HUSK_VMM_BIN says otherwise) or qemu (QEMU's microvm, the reference).
        #[arg(long, default_value = "husk", value_parser = ["husk", "qemu"])]
        vmm: String,
        #[arg(long, default_value_t = 240)]
        timeout: u64,
        /// Boot this many times one after another and report medians; the
        /// console is shown only for a single run.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
    },
    /// Stop this checkout's nested test host.
    Down,
    /// Serve run requests (inside the nested host).
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        /// Stop after this many seconds without a request.
        #[arg(long, default_value_t = 300)]
        idle_secs: u64,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Passes a program's output through to ours as it arrives.
fn print_frame(frame: &Frame) {
    match frame {
        Frame::Stdout(data) => {
            let _ = std::io::stdout().write_all(data).and_then(|()| std::io::stdout().flush());
        }
        Frame::Stderr(data) => {
            let _ = std::io::stderr().write_all(data);
        }
        _ => {}
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("husk-testhost: error: {err:#}");
            ExitCode::from(125)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let self_exe = || std::env::current_exe().context("locating the husk-testhost binary");
    match cli.command {
        Cmd::Up => {
            let host = TestHost::shared(&self_exe()?)?;
            let info = host.info()?;
            println!(
                "test host: {:?}, kernel {}, kvm {}, up {:.1} s",
                host.mode(),
                info.kernel,
                info.kvm,
                info.uptime_secs
            );
            if info.kvm != "hardware" {
                bail!("the test host has no hardware-style KVM (it reports {})", info.kvm);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { timeout, cwd, env, argv } => {
            let host = TestHost::shared(&self_exe()?)?;
            let cwd = match cwd {
                Some(cwd) => cwd,
                None => std::env::current_dir().context("reading the current directory")?,
            };
            let request = RunRequest { argv, cwd: Some(cwd), env, timeout_secs: timeout };
            let output = host.run_streaming(&request, &print_frame)?;
            if output.report.timed_out {
                eprintln!("husk-testhost: {:?} timed out after {timeout} s and was killed", request.argv);
            }
            Ok(ExitCode::from(output.report.shell_status().clamp(0, 255) as u8))
        }
        Cmd::BootGuest { kernel, cmdline, vmm, timeout, runs } => {
            let artifact = |name: &str| husk_tests::paths::artifact(name).map_err(anyhow::Error::msg);
            let (kernel_path, initrd) = (artifact(&kernel)?, artifact("initramfs.cpio")?);
            let agent = format!("husk.ready_action=poweroff {cmdline}");
            let mut config_file = None;
            let request = if vmm == "qemu" {
                qemu_microvm(&kernel_path, &initrd, &agent, timeout)
            } else {
                let binary = husk_tests::paths::husk_vmm().map_err(anyhow::Error::msg)?;
                let scratch = husk_tests::paths::artifacts_dir().join("testhost/scratch");
                std::fs::create_dir_all(&scratch)?;
                let config = scratch.join(format!("boot-guest-{}.json", std::process::id()));
                let request = husk_vmm(&binary, &config, &kernel_path, &initrd, &agent, timeout)?;
                config_file = Some(config);
                request
            };
            let host = TestHost::shared(&self_exe()?)?;
            eprintln!("husk-testhost: booting {kernel} + initramfs.cpio with {vmm} in the {:?} test host", host.mode());
            let mut samples = Vec::new();
            for run in 1..=runs {
                let show_console: &(dyn Fn(&Frame) + Sync) = if runs == 1 { &print_frame } else { &|_| {} };
                let output = host.run_streaming(&request, show_console)?;
                if !output.report.success() {
                    bail!("run {run}: the VMM ended with {:?}\n{}", output.report, output.stderr_text());
                }
                let Some(ready) = output.stdout_text().lines().find_map(ReadyLine::parse) else {
                    bail!("run {run}: the guest never printed its ready line ({:?})", output.report);
                };
                let printk = ready.printk.map_or(f64::NAN, |t| t.as_secs_f64());
                let sample = [printk, ready.uptime.as_secs_f64(), output.elapsed.as_secs_f64()];
                println!(
                    "run {run}: kernel start -> agent ready {:.3} s (printk clock), uptime {:.3} s; whole VMM run {:.3} s",
                    sample[0], sample[1], sample[2]
                );
                samples.push(sample);
            }
            if let Some(config) = config_file {
                let _ = std::fs::remove_file(config);
            }
            if runs > 1 {
                let median = |i: usize| {
                    let mut column: Vec<f64> = samples.iter().map(|s| s[i]).collect();
                    column.sort_by(f64::total_cmp);
                    column[column.len() / 2]
                };
                println!(
                    "median of {runs}: kernel start -> agent ready {:.3} s (printk clock), uptime {:.3} s; whole VMM run {:.3} s",
                    median(0),
                    median(1),
                    median(2)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let was_running = testhost::shutdown_nested()?;
            println!("{}", if was_running { "nested test host stopped" } else { "no nested test host was running" });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { listen, idle_secs } => {
            husk_tests::runner::serve(listen, Duration::from_secs(idle_secs))
                .with_context(|| format!("serving on {listen}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
