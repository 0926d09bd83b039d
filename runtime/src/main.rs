//! `husk`: a runc-compatible OCI runtime that runs each container in its
//! own microVM. podman (through conmon) and containerd's runc shim call it
//! exactly as they call runc; see README.md for the set-up.

mod commands;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "husk",
    about = "An OCI runtime that runs each container in its own microVM",
    disable_version_flag = true
)]
pub struct Cli {
    /// Where container state lives (a tmpfs: it must not outlive a reboot).
    #[arg(long, global = true, default_value = husk_runtime::container_state::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write log lines (and errors) to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// text or json (one object per line, as runc writes them).
    #[arg(long, global = true, default_value = "text")]
    pub log_format: logging::Format,
    /// Log debug lines, and boot guests with husk.debug=1.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for compatibility; husk runs without systemd, and cgroup
    /// paths in systemd's form are mapped to cgroupfs paths.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility (runc's option); husk needs root.
    #[arg(long, global = true, value_name = "true|false|auto", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<commands::Command>,
}

fn main() -> ExitCode {
    // Writes to a closed pipe or socket must be errors, not death.
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let cli = Cli::parse();
    logging::init(cli.log.as_deref(), cli.log_format, cli.debug);
    if cli.version {
        print!("{}", commands::version_text());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command.clone() else {
        eprintln!("husk: no command given; see husk --help");
        return ExitCode::from(2);
    };
    match commands::run(&cli, command) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // As runc: to the log (engines read its last error) and to
            // stderr (go-runc reports a failed kill or delete with it).
            logging::error(&format!("{err:#}"));
            if cli.log.is_some() {
                eprintln!("husk: {err:#}");
            }
            ExitCode::from(1)
        }
    }
}
