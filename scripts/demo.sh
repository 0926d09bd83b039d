#!/usr/bin/env bash
# The main job, from a fresh clone: installs and builds what it needs, then
# runs a busybox container (the image built from Debian's busybox-static)
# inside a KVM microVM: husk-vmm boots the project's kernel and initramfs,
# the husk-agent (PID 1) runs the container with the image shared over
# virtio-fs, and its output streams back over vsock. The microVM runs in the
# test host: here, when this machine's /dev/kvm boots Linux, else nested
# under software emulation.
#   scripts/demo.sh          the container demo
#   scripts/demo.sh boot     only boot the guest to the agent's ready line
#                            (further arguments go to `husk-testhost boot-guest`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/build.sh
if [ "${1:-}" = boot ]; then
    shift
    exec target/debug/husk-testhost boot-guest "$@"
fi
exec target/debug/husk-testhost run -- "$repo/target/debug/husk-container-suite" demo \
    --vmm "$repo/target/debug/husk-vmm" \
    --kernel "$repo/target/husk/vmlinux" \
    --initrd "$repo/target/husk/initramfs.cpio" \
    --rootfs "$repo/target/husk/images/busybox/rootfs" \
    --probe "$repo/target/guest/x86_64-unknown-linux-gnu/guest/husk-guest-probe"
