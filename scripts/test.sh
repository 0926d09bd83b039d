#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs and builds what it needs
# (scripts/build.sh), checks formatting and lints, then runs every test,
# including the ones that boot microVMs in the test host. Each step's time
# goes to stderr: CI has 90 minutes for all of it.
#
# Fuzzing is not a step: `cargo test` replays every committed seed and crash
# regression through the fuzz targets' entry points (husk_vmm::fuzz), and
# scripts/fuzz.sh, which needs its own instrumented build (about ten minutes
# on a fresh machine), is the separate, longer run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

started=$SECONDS
step() {
    local begun=$SECONDS
    "$@"
    echo "test.sh: $* took $((SECONDS - begun)) s ($((SECONDS - started)) s so far)" >&2
}

step scripts/build.sh
step cargo fmt --all -- --check
step cargo clippy --locked --workspace --all-targets -- -D warnings
# Boot the nested test host before the tests ask for it (they would boot it
# themselves, once, if not), and stop it however the run ends.
trap 'target/debug/husk-testhost down >&2 || true' EXIT
step target/debug/husk-testhost up
step cargo test --locked --workspace
