#!/usr/bin/env bash
# Builds the guest initramfs: a newc cpio holding the static husk-agent as
# /init and the /dev/console node the kernel opens for it. Published at
# target/husk/initramfs.cpio.
#
# Uncompressed on purpose: the agent is the only sizeable file, and copying
# it costs the guest less than decompressing it under (nested) emulation —
# the guest kernel is built without any RD_* decompressor.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${HUSK_TARGET_DIR:-$repo/target/husk}

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { printf 'build-initramfs: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root: the archive holds a device node (/dev/console)"
"$repo/scripts/install-deps.sh" guest

# A static agent: glibc linked in (+crt-static) so the initramfs needs no
# loader or libraries. Its own target dir: the RUSTFLAGS differ from the host
# build's and would otherwise rebuild the host's dependencies each time.
triple=x86_64-unknown-linux-gnu
log "building the static husk-agent"
( cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked \
    -p husk-agent --profile guest --target "$triple" --target-dir "$repo/target/guest" )
agent=$repo/target/guest/$triple/guest/husk-agent
if readelf -l "$agent" | grep -q 'Requesting program interpreter'; then
    die "$agent is dynamically linked; the guest has no loader"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d -m 0755 "$stage"/{dev,proc,sys,tmp,run}
install -m 0755 "$agent" "$stage/init"
mknod -m 0600 "$stage/dev/console" c 5 1

mkdir -p "$target"
( cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible ) > "$target/initramfs.cpio.tmp"
mv "$target/initramfs.cpio.tmp" "$target/initramfs.cpio"
log "published $target/initramfs.cpio ($(stat -c %s "$target/initramfs.cpio") bytes; agent $(stat -c %s "$agent") bytes)"
