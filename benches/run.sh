#!/usr/bin/env bash
# Runs husk's benchmarks from a fresh clone: installs and builds what they
# need (scripts/build.sh; the release husk-vmm and husk they measure; the
# test host and the suites that run in it), then `husk-bench "$@"` —
# by default `suite`, the whole start-up and density suite. Results land in
# benches/results/<UTC date>/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/build.sh
cargo build --locked --release -p husk-vmm -p husk-runtime
cargo build --locked -p husk-tests --bins
cargo build --locked -p husk-benches
exec target/debug/husk-bench "${@:-suite}"
