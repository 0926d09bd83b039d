#!/usr/bin/env bash
# The main job, from a fresh clone: installs and builds what it needs, then
# runs `podman --runtime husk run` of a busybox container (the image built
# from Debian's busybox-static) that prints from inside its own KVM
# microVM: husk boots husk-vmm with the project's kernel and initramfs, the
# image is shared over virtio-fs, the guest agent (PID 1) runs the container
# and its output streams back over vsock to conmon and podman. podman runs
# in the test host: here, when this machine's /dev/kvm boots Linux, else
# nested under software emulation.
#   scripts/demo.sh          the podman demo
#   scripts/demo.sh agent    the same container driven through the agent
#                            protocol directly (no engine)
#   scripts/demo.sh boot     only boot the guest to the agent's ready line
#                            (further arguments go to `husk-testhost boot-guest`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/build.sh
case "${1:-}" in
    boot)
        shift
        exec target/debug/husk-testhost boot-guest "$@"
        ;;
    agent)
        exec target/debug/husk-testhost run -- "$repo/target/debug/husk-container-suite" demo \
            --vmm "$repo/target/debug/husk-vmm" \
            --kernel "$repo/target/husk/vmlinux" \
            --initrd "$repo/target/husk/initramfs.cpio" \
            --rootfs "$repo/target/husk/images/busybox/rootfs" \
            --probe "$repo/target/guest/x86_64-unknown-linux-gnu/guest/husk-guest-probe"
        ;;
esac
exec target/debug/husk-testhost run -- "$repo/target/debug/husk-engine-suite" demo \
    --husk "$repo/target/debug/husk" \
    --images "$repo/target/husk/images/busybox/engines" \
    --rootfs "$repo/target/husk/images/busybox/rootfs"
