#!/usr/bin/env bash
# Installs what husk needs and builds everything a microVM boot needs:
# the guest kernel (cached by config), the initramfs with the agent, the
# nested test host's image, the test images, and the workspace's binaries.
#
#   scripts/build.sh              all of it (every workspace target, debug)
#   scripts/build.sh --no-cargo   all but the workspace build (benches/run.sh
#                                 builds only the binaries it runs)
set -euo pipefail
cargo_build=true
case "${1:-}" in
    "") ;;
    --no-cargo) cargo_build=false ;;
    *) echo "build: unknown argument $1 (takes --no-cargo)" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if ! command -v cargo >/dev/null; then
    echo "build: cargo is not on PATH; husk builds with the machine's Rust toolchain" >&2
    exit 1
fi
scripts/install-deps.sh kernel guest testhost engines apitest benches
kernel-config/build-kernel.sh
images/build-initramfs.sh
# The busybox test container's rootfs, from Debian's busybox-static (skipped when current).
images/build-busybox-rootfs.sh
# The same image packed for podman and containerd (skipped when current).
images/build-engine-images.sh
tests/testhost/build-host-image.sh
if $cargo_build; then
    cargo build --locked --workspace --all-targets
fi
