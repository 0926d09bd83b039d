//! Exit statuses of the agent's children, collected in one place.
//!
//! As PID 1 the agent inherits every orphan, so it must reap with
//! `waitpid(-1)`; a per-child `waitpid(pid)` elsewhere would race with that
//! and lose statuses. Instead the supervisor loop reaps everything on
//! SIGCHLD into this table, and whoever cares about a pid — the helper
//! spawner, a container process's waiter — blocks on [`wait`] until its
//! status is there, however early or late it asks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, LazyLock, Mutex};

/// Statuses nobody has claimed are kept for this many exits, then dropped
/// oldest first: orphans nobody waits for must not grow the table forever,
/// and a claimant always asks long before that many others have exited.
const UNCLAIMED_LIMIT: usize = 4096;

struct Table {
    statuses: HashMap<libc::pid_t, libc::c_int>,
    order: VecDeque<libc::pid_t>,
}

static TABLE: LazyLock<Mutex<Table>> =
    LazyLock::new(|| Mutex::new(Table { statuses: HashMap::new(), order: VecDeque::new() }));
static EXITED: Condvar = Condvar::new();

fn table() -> std::sync::MutexGuard<'static, Table> {
    // A panic while holding the lock powers the VM off (the panic hook), so
    // a poisoned table is never seen by anyone who could recover.
    TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reaps every child that has exited. Called on SIGCHLD.
pub fn reap_all() {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        reaped.push((pid, status));
    }
    if reaped.is_empty() {
        return;
    }
    let mut table = table();
    for (pid, status) in reaped {
        if table.statuses.insert(pid, status).is_none() {
            table.order.push_back(pid);
        }
    }
    while table.order.len() > UNCLAIMED_LIMIT {
        if let Some(oldest) = table.order.pop_front() {
            table.statuses.remove(&oldest);
        }
    }
    EXITED.notify_all();
}

/// Blocks until `pid` (a child of the agent, or an orphan it inherits) has
/// exited and returns its wait status. One claimant per pid.
pub fn wait(pid: libc::pid_t) -> libc::c_int {
    let mut table = table();
    loop {
        if let Some(status) = table.statuses.remove(&pid) {
            table.order.retain(|&p| p != pid);
            return status;
        }
        table = EXITED.wait(table).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The child is reaped by the code under test, not by Child::wait.
    #[allow(clippy::zombie_processes)]
    fn a_status_reaped_before_the_claim_is_kept_for_it() {
        let child = std::process::Command::new("/bin/sh").args(["-c", "exit 42"]).spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        // Nothing else in this test process reaps, so polling stands in for
        // the supervisor's SIGCHLD.
        let reaper = std::thread::spawn(move || {
            for _ in 0..500 {
                reap_all();
                if table().statuses.contains_key(&pid) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        reaper.join().unwrap();
        let status = wait(pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 42);
    }
}
