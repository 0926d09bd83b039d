//! A container's cgroup v2 directory in the guest: counters for `Stats` and
//! OOM reports, and killing everything in it.

use std::io;
use std::path::PathBuf;

use husk_api::agent_protocol::ContainerStats;

use super::spec::CGROUP_PARENT;

pub fn path(container_id: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup{CGROUP_PARENT}/{container_id}"))
}

fn read(container_id: &str, file: &str) -> io::Result<String> {
    std::fs::read_to_string(path(container_id).join(file))
}

/// `key value` lines (memory.events, cpu.stat) as a lookup.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `max` or a number.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The number of OOM kills in the container's cgroup so far (0 when the
/// memory controller or the cgroup is missing).
pub fn oom_kills(container_id: &str) -> u64 {
    read(container_id, "memory.events").ok().and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0)
}

pub fn stats(container_id: &str) -> io::Result<ContainerStats> {
    let cpu = read(container_id, "cpu.stat")?;
    let number = |file: &str| -> io::Result<u64> {
        read(container_id, file)?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, file.to_owned()))
    };
    Ok(ContainerStats {
        memory_current_bytes: number("memory.current")?,
        memory_max_bytes: limit(&read(container_id, "memory.max")?),
        memory_oom_kills: oom_kills(container_id),
        cpu_usage_us: keyed(&cpu, "usage_usec").unwrap_or(0),
        cpu_user_us: keyed(&cpu, "user_usec").unwrap_or(0),
        cpu_system_us: keyed(&cpu, "system_usec").unwrap_or(0),
        pids_current: number("pids.current")?,
        pids_max: limit(&read(container_id, "pids.max")?),
    })
}

/// Sends `signal` to every process in the container's cgroup.
pub fn signal_all(container_id: &str, signal: i32) -> io::Result<()> {
    if signal == libc::SIGKILL && std::fs::write(path(container_id).join("cgroup.kill"), "1").is_ok() {
        return Ok(());
    }
    for pid in read(container_id, "cgroup.procs")?.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill with a pid and signal; a process that is already gone
        // (ESRCH) is not an error here.
        unsafe { libc::kill(pid, signal) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(3));
        assert_eq!(keyed(events, "missing"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("134217728\n"), Some(134217728));
    }
}
