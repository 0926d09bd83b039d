#!/usr/bin/env bash
# Builds the guest initramfs: a newc cpio holding the static husk-agent as
# /init and the /dev/console node the kernel opens for it. Published at
# target/husk/initramfs.cpio. Also builds the test initramfs,
# target/husk/initramfs-test.cpio: the same plus the static
# /bin/husk-guest-probe the integration tests run in the guest.
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
( cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
    LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu cargo build --quiet --locked \
    -p husk-agent -p husk-tests --bin husk-agent --bin husk-guest-probe \
    --profile guest --target "$triple" --target-dir "$repo/target/guest" )
agent=$repo/target/guest/$triple/guest/husk-agent
probe=$repo/target/guest/$triple/guest/husk-guest-probe
for binary in "$agent" "$probe"; do
    if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
        die "$binary is dynamically linked; the guest has no loader"
    fi
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d -m 0755 "$stage"/{dev,proc,sys,tmp,run}
install -m 0755 "$agent" "$stage/init"
mknod -m 0600 "$stage/dev/console" c 5 1

mkdir -p "$target"
pack() {
    ( cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible ) > "$target/$1.tmp"
    mv "$target/$1.tmp" "$target/$1"
    log "published $target/$1 ($(stat -c %s "$target/$1") bytes)"
}
pack initramfs.cpio
install -d -m 0755 "$stage/bin"
install -m 0755 "$probe" "$stage/bin/husk-guest-probe"
pack initramfs-test.cpio
