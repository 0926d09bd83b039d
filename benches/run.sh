#!/usr/bin/env bash
# Runs husk's benchmarks from a fresh clone: installs and builds what they
# need (scripts/build.sh --no-cargo; the release husk-vmm and husk they
# measure; the test host and the suites that run in it), then `husk-bench "$@"` —
# by default `suite`, the whole start-up and density suite. Results land in
# benches/results/<UTC date>/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/build.sh --no-cargo
# Only what the benchmarks run (not every test target): the release VMM and
# runtime they measure, the suites that drive them in the test host, and
# husk-bench (plus the debug husk-vmm the device and container suites use).
cargo build --locked --release -p husk-vmm -p husk-runtime
cargo build --locked -p husk-tests -p husk-benches -p husk-vmm --bins
exec target/debug/husk-bench "${@:-suite}"
