#!/usr/bin/env bash
# The main job, from a fresh clone: installs and builds what it needs, then
# boots husk's guest (kernel + initramfs with the husk-agent as PID 1) in a
# KVM microVM and shows its console up to the agent's ready line.
#
# Until husk-vmm exists (issue #3) the microVM is QEMU's microvm machine, run
# in the test host (nested under software emulation when this machine's
# /dev/kvm cannot boot Linux).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/build.sh
exec target/debug/husk-testhost boot-guest "$@"
