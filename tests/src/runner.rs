//! Running one program for the test host: with a timeout, its output
//! streamed as frames, and its whole process group killed when it ends, times
//! out or its client goes away. Used by the runner inside the nested host and
//! by the direct (local) mode alike.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kvm::KvmFlavour;
use crate::protocol::{ExitReport, Frame, HostInfo, Request, RunRequest};

/// The environment every program starts from; the request's env is added.
const BASE_ENV: &[(&str, &str)] =
    &[("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/root"), ("LANG", "C.UTF-8")];

/// The longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

/// Runs `request`, passing its output to `sink` as it arrives. A sink error
/// (the client is gone) kills the program. Errors only when the program
/// cannot be started.
pub fn execute(request: &RunRequest, sink: &(dyn Fn(Frame) -> io::Result<()> + Sync)) -> io::Result<ExitReport> {
    let (program, args) =
        request.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &request.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn()?;
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: signalling a process group we created has no memory effects.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let deadline = Instant::now() + Duration::from_secs(request.timeout_secs);

    std::thread::scope(|scope| {
        let pump = |mut from: Box<dyn Read + Send>, frame: fn(Vec<u8>) -> Frame| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sink(frame(buf[..n].to_vec())).is_err() {
                            kill_group();
                            return;
                        }
                    }
                }
            }
        };
        scope.spawn(move || pump(Box::new(stdout), Frame::Stdout));
        scope.spawn(move || pump(Box::new(stderr), Frame::Stderr));

        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                kill_group();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever the program left behind would hold the output pipes open
        // and outlive the test: end it with its leader.
        kill_group();
        Ok(ExitReport { code: status.code(), signal: status.signal(), timed_out })
    })
}

/// What this machine is, for `Ping`.
pub fn host_info() -> HostInfo {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    HostInfo {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        uptime_secs: read("/proc/uptime").split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0),
        kvm: KvmFlavour::detect().name().to_owned(),
    }
}

/// Serves requests on `listen` until a `Shutdown` request or until no
/// request has been active for `idle`, so a forgotten test host stops.
pub fn serve(listen: SocketAddr, idle: Duration) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let activity = Arc::new(Activity { active: AtomicUsize::new(0), last: Mutex::new(Instant::now()) });
    {
        let activity = Arc::clone(&activity);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if activity.active.load(Ordering::SeqCst) == 0 && activity.last.lock().unwrap().elapsed() > idle {
                eprintln!("husk-testhost runner: idle for {idle:?}, stopping");
                std::process::exit(0);
            }
        });
    }
    for connection in listener.incoming() {
        let Ok(stream) = connection else { continue };
        let activity = Arc::clone(&activity);
        std::thread::spawn(move || {
            activity.begin();
            if let Err(err) = handle(stream) {
                eprintln!("husk-testhost runner: connection: {err}");
            }
            activity.end();
        });
    }
    Ok(())
}

struct Activity {
    active: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn begin(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }
    fn end(&self) {
        *self.last.lock().unwrap() = Instant::now();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle(stream: TcpStream) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let writer = Mutex::new(&stream);
    let send = |frame: Frame| frame.write_to(&mut *writer.lock().unwrap());
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(err) => return send(Frame::Error(format!("bad request: {err}"))),
    };
    match request {
        Request::Ping => send(Frame::Pong(host_info())),
        Request::Shutdown => {
            send(Frame::Exit(ExitReport { code: Some(0), ..Default::default() }))?;
            (&stream).flush()?;
            eprintln!("husk-testhost runner: shutdown requested");
            std::process::exit(0);
        }
        Request::Run(run) => match execute(&run, &send) {
            Ok(report) => send(Frame::Exit(report)),
            Err(err) => send(Frame::Error(format!("cannot start {:?}: {err}", run.argv))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str], timeout_secs: u64) -> (io::Result<ExitReport>, Vec<Frame>) {
        let frames = Mutex::new(Vec::new());
        let request = RunRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("HUSK_TEST_VAR".into(), "forty-two".into())],
            timeout_secs,
            ..Default::default()
        };
        let report = execute(&request, &|frame| {
            frames.lock().unwrap().push(frame);
            Ok(())
        });
        (report, frames.into_inner().unwrap())
    }

    fn collect(frames: &[Frame], stdout: bool) -> String {
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|f| match (f, stdout) {
                (Frame::Stdout(d), true) | (Frame::Stderr(d), false) => d.clone(),
                _ => vec![],
            })
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn streams_both_outputs_and_the_exit_code() {
        let (report, frames) = run(&["/bin/sh", "-c", "echo out $HUSK_TEST_VAR; echo err >&2; exit 42"], 30);
        let report = report.unwrap();
        assert_eq!(report.code, Some(42));
        assert_eq!(collect(&frames, true), "out forty-two\n");
        assert_eq!(collect(&frames, false), "err\n");
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let started = Instant::now();
        // The background sleep keeps stdout open: without killing the group
        // the pumps would wait for it.
        let (report, _) = run(&["/bin/sh", "-c", "sleep 30 & sleep 30"], 1);
        let report = report.unwrap();
        assert!(report.timed_out);
        assert_eq!(report.signal, Some(libc::SIGKILL));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn a_missing_program_is_a_start_error() {
        let (report, _) = run(&["/nonexistent/program"], 5);
        assert_eq!(report.unwrap_err().kind(), io::ErrorKind::NotFound);
        let (report, _) = run(&[], 5);
        assert_eq!(report.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
