#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs and builds what it needs
# (scripts/build.sh), checks formatting and lints, then runs every test,
# including the ones that boot microVMs in the test host.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/build.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Boot the nested test host before the tests ask for it (they would boot it
# themselves, once, if not), and stop it however the run ends.
trap 'target/debug/husk-testhost down >&2 || true' EXIT
target/debug/husk-testhost up
cargo test --locked --workspace
# Hostile-guest fuzzing, a short run of every target (scripts/fuzz.sh).
scripts/fuzz.sh
