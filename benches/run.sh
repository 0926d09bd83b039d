#!/usr/bin/env bash
# Runs husk's benchmarks from a fresh clone: builds what they need (release
# husk-vmm), then `husk-bench "$@"` (default: vmm). Results land in
# benches/results/<date>/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/build.sh
cargo build --locked --release -p husk-vmm -p husk-runtime
cargo build --locked -p husk-benches
exec target/debug/husk-bench "${@:-vmm}"
