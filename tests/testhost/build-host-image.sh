#!/usr/bin/env bash
# Builds the nested test host's boot image from Debian packages: Debian's
# stock amd64 kernel (it has kvm_amd and the 9p drivers as modules) and an
# initramfs of busybox-static, those modules and tests/testhost/init.sh.
# Published at target/husk/testhost/{vmlinuz,initramfs.cpio}; the result is
# cached outside the repository, keyed by the package versions and inputs.
#
# The kernel package's whole module tree (with its depmod output) stays in
# the cache entry, at $out/modules/lib/modules/<kver>; the initramfs names
# that path in /modules.tree. The test host sees it over 9p and makes it its
# /lib/modules/<kver>, so whatever the kernel asks for (netfilter for
# podman's bridge networks, overlay, bridge, traffic control) autoloads.
set -euo pipefail

# Modules the init loads before the module tree is reachable (the 9p mount
# needs them) or that nothing would autoload (/dev/kvm and /dev/net/tun have
# no node until their module is in), in dependency order as modprobe
# resolves them.
MODULES=(virtio_pci virtio_net 9pnet_virtio 9p kvm_amd tun veth)
# Bump when what the cache entry holds changes shape.
RECIPE=2-module-tree

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
# Canonical: the test host resolves the module tree's path from its own root,
# where a symlink on the way would point elsewhere.
mkdir -p "$cache/testhost"
cache=$(cd "$cache" && pwd -P)
target=${HUSK_TARGET_DIR:-$repo/target/husk}/testhost

log() { printf 'build-host-image: %s\n' "$*" >&2; }
die() { printf 'build-host-image: error: %s\n' "$*" >&2; exit 1; }

"$repo/scripts/install-deps.sh" testhost

kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-get update?)"
kernel_ver=$(apt-cache policy "$kernel_pkg" | awk '/Candidate:/ {print $2}')
busybox_ver=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
# The cache path is part of the key: the initramfs names the module tree by
# its absolute path.
key=$( { echo "$RECIPE $kernel_pkg=$kernel_ver busybox-static=$busybox_ver ${MODULES[*]} $cache"; cat "$here/init.sh" "$0"; } | sha256sum | cut -c1-16)
out=$cache/testhost/$key
kver=${kernel_pkg#linux-image-}
tree=$out/modules/lib/modules/$kver

# The test host binds the module tree over its chroot's /lib/modules, which
# must exist on this machine for that (a machine without a kernel package,
# such as a container, has none); /lib/modules is where modprobe looks.
if [ ! -d /lib/modules ]; then
    log "creating /lib/modules (empty) so the test host can mount its kernel's modules there"
    mkdir -p /lib/modules
fi

if [ ! -f "$out/initramfs.cpio" ] || [ ! -f "$tree/modules.dep" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    chmod 755 "$work"
    log "fetching $kernel_pkg $kernel_ver and busybox-static $busybox_ver"
    ( cd "$work" && apt-get download -q "$kernel_pkg" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true )
    mkdir "$work/root"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
    [ -f "$work/root/boot/vmlinuz-$kver" ] || die "$kernel_pkg has no /boot/vmlinuz-$kver"
    # The .deb ships no modules.dep.
    depmod -b "$work/root" "$kver"

    stage=$work/stage
    mkdir -p "$stage"/{bin,dev,proc,sys,host}
    cp "$work/root/bin/busybox" "$stage/bin/busybox"
    install -m 0755 "$here/init.sh" "$stage/init"
    printf '%s\n' "$tree" > "$stage/modules.tree"
    : > "$stage/modules.order"
    for module in "${MODULES[@]}"; do
        modprobe -d "$work/root" -S "$kver" --show-depends "$module" | awk '$1 == "insmod" {print $2}'
    done | awk '!seen[$0]++' | while read -r ko; do
        rel=${ko#"$work/root/"}
        mkdir -p "$stage/$(dirname "$rel")"
        cp "$ko" "$stage/$rel"
        echo "$rel" >> "$stage/modules.order"
    done
    [ -s "$stage/modules.order" ] || die "no modules resolved for ${MODULES[*]}"

    staging=$cache/testhost/.$key.tmp
    rm -rf "$staging" && mkdir -p "$staging"
    cp "$work/root/boot/vmlinuz-$kver" "$staging/vmlinuz"
    ( cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible ) > "$staging/initramfs.cpio"
    mkdir -p "$staging/modules/lib/modules"
    mv "$work/root/lib/modules/$kver" "$staging/modules/lib/modules/$kver"
    rm -rf "$out" && mv "$staging" "$out"
    log "built $out ($(du -sm "$out/modules" | cut -f1) MiB of modules)"
else
    log "cached image $key"
fi

mkdir -p "$target"
for f in vmlinuz initramfs.cpio; do
    cp "$out/$f" "$target/$f.tmp" && mv "$target/$f.tmp" "$target/$f"
done
log "published $target/{vmlinuz,initramfs.cpio}"
