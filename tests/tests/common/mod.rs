//! Helpers shared by the integration tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use husk_api::agent_console::ReadyLine;
use husk_tests::paths;
use husk_tests::testhost::{RunOutput, TestHost};

/// The test host for this run. A test that cannot get one fails with the
/// reason; it never skips.
pub fn test_host() -> TestHost {
    TestHost::shared(env!("CARGO_BIN_EXE_husk-testhost").as_ref())
        .unwrap_or_else(|err| panic!("no test host to boot microVMs in: {err}"))
}

/// A built artifact under target/husk, or a failure naming the build step.
pub fn artifact(relative: &str) -> PathBuf {
    paths::artifact(relative).unwrap_or_else(|err| panic!("{err}"))
}

/// Everything a failed assertion should show about a run.
pub fn describe(output: &RunOutput) -> String {
    format!(
        "exit {:?} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.report,
        output.elapsed.as_secs_f64(),
        output.stdout_text(),
        output.stderr_text()
    )
}

/// The one ready line the guest agent printed on the console.
pub fn ready_line(output: &RunOutput) -> ReadyLine {
    let ready: Vec<ReadyLine> = output.stdout_text().lines().filter_map(ReadyLine::parse).collect();
    assert_eq!(ready.len(), 1, "exactly one ready line: {}", describe(output));
    ready[0]
}
