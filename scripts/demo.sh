#!/usr/bin/env bash
# The main job, from a fresh clone: installs and builds what it needs, then
# boots husk's guest (kernel + initramfs with the husk-agent as PID 1) in a
# KVM microVM run by husk-vmm and shows its console up to the agent's ready
# line. The microVM runs in the test host: here, when this machine's
# /dev/kvm boots Linux, else nested under software emulation.
# Arguments go to `husk-testhost boot-guest` (e.g. --vmm qemu, --kernel bzImage).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/build.sh
exec target/debug/husk-testhost boot-guest "$@"
