#!/usr/bin/env bash
# Builds husk's guest kernel from Debian's linux-source-6.12 with the
# husk-guest.config fragment, and publishes it at stable paths:
#   target/husk/vmlinux      ELF with a PVH note (direct boot)
#   target/husk/bzImage      for loaders that want a bzImage
#   target/husk/kernel.config the full .config that was built
#
# Builds are cached outside the repository, keyed by the fragment's content,
# the kernel source version and this recipe's version, so a second run with an
# unchanged config only copies files.
#
# Usage:
#   kernel-config/build-kernel.sh                  build (or reuse) and publish
#   kernel-config/build-kernel.sh --check FRAGMENT  only configure FRAGMENT and
#                                                   verify it; build nothing
# Environment:
#   HUSK_CACHE_DIR   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/husk)
#   HUSK_TARGET_DIR  where artifacts are published (default: <repo>/target/husk)
set -euo pipefail

# Bump when the build steps change in a way that changes the output.
RECIPE_VERSION=1

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
target=${HUSK_TARGET_DIR:-$repo/target/husk}
fragment=$here/husk-guest.config
mode=build

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    --check) [ $# -eq 2 ] || die "usage: $0 --check FRAGMENT"; mode=check; fragment=$(realpath "$2") ;;
    "") ;;
    *) die "usage: $0 [--check FRAGMENT]" ;;
esac
[ -f "$fragment" ] || die "no config fragment at $fragment"

"$repo/scripts/install-deps.sh" kernel

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
src_tar=/usr/src/linux-source-6.12.tar.xz
[ -f "$src_tar" ] || die "$src_tar missing although linux-source-6.12 is installed"

# Unpacking the 150 MB tarball takes a minute: do it once per source version.
src_dir=$cache/linux-src/$src_version
if [ ! -f "$src_dir/.husk-unpacked" ]; then
    log "unpacking linux-source-6.12 $src_version into $src_dir"
    rm -rf "$src_dir" && mkdir -p "$src_dir"
    tar -xJf "$src_tar" -C "$src_dir" --strip-components=1
    touch "$src_dir/.husk-unpacked"
fi

# Applies the fragment to allnoconfig in $1 (an O= build dir), then checks that
# every requested symbol survived olddefconfig with the requested value.
configure_and_verify() {
    local objdir=$1
    mkdir -p "$objdir"
    make -s -C "$src_dir" O="$objdir" ARCH=x86_64 KCONFIG_ALLCONFIG="$fragment" allnoconfig >/dev/null
    make -s -C "$src_dir" O="$objdir" ARCH=x86_64 olddefconfig >/dev/null
    local config=$objdir/.config failures=0 sym want got line
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                sym=${line%%=*}; want=${line#*=}
                got=$(grep -E "^${sym}=" "$config" | head -n1 | cut -d= -f2- || true)
                if [ "$got" != "$want" ]; then
                    log "MISSING: $sym=$want was requested, but after olddefconfig it is ${got:-not set} (a dependency is off, or the symbol does not exist in this kernel)"
                    failures=$((failures + 1))
                fi ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# }; sym=${sym%% *}
                if got=$(grep -E "^${sym}=" "$config"); then
                    log "UNWANTED: $sym must be off, but after olddefconfig it is ${got#*=}"
                    failures=$((failures + 1))
                fi ;;
        esac
    done < "$fragment"
    if [ "$failures" -ne 0 ]; then
        die "$failures requested kernel option(s) did not survive olddefconfig; see the lines above"
    fi
}

if [ "$mode" = check ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    configure_and_verify "$tmp"
    log "config OK: every option in $fragment is set as requested"
    exit 0
fi

key=$( { echo "recipe=$RECIPE_VERSION"; echo "source=$src_version"; cat "$fragment"; } | sha256sum | cut -c1-16)
out=$cache/kernel/$key
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    log "cached build $key ($out)"
else
    objdir=$cache/kernel-build/$key
    rm -rf "$objdir"
    configure_and_verify "$objdir"
    log "building vmlinux and bzImage (key $key, $(nproc) jobs; ~15 CPU-minutes on a cold cache)"
    start=$(date +%s)
    if ! make -C "$src_dir" O="$objdir" ARCH=x86_64 -j"$(nproc)" vmlinux bzImage > "$objdir/build.log" 2>&1; then
        tail -n 40 "$objdir/build.log" >&2
        die "kernel build failed; full log in $objdir/build.log"
    fi
    log "built in $(( $(date +%s) - start )) s"
    staging=$cache/kernel/.$key.tmp
    rm -rf "$staging" && mkdir -p "$staging"
    cp "$objdir/vmlinux" "$staging/vmlinux"
    cp "$objdir/arch/x86/boot/bzImage" "$staging/bzImage"
    cp "$objdir/.config" "$staging/kernel.config"
    rm -rf "$out" && mv "$staging" "$out"
    rm -rf "$objdir"
fi

mkdir -p "$target"
for f in vmlinux bzImage kernel.config; do
    cp "$out/$f" "$target/$f.tmp" && mv "$target/$f.tmp" "$target/$f"
done
log "published $target/{vmlinux,bzImage,kernel.config}"
