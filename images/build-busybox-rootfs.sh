#!/usr/bin/env bash
# Builds the busybox test container's root file system from Debian's
# busybox-static package: no registry, no network but apt. Published at
# target/husk/images/busybox/rootfs, with the package's version in
# target/husk/images/busybox/VERSION; skipped when that version is still
# apt's candidate and the rootfs is there.
#
# The rootfs: /bin/busybox and a symlink in /bin for each of its applets,
# the usual top-level directories, and an /etc with three users (root,
# guest 1000, nobody) and groups giving guest supplementary ones (audio,
# tenants), for the tests of users, groups and home directories.
#
# Published by rename: staged next to the destination, then renamed into
# place, so a reader never sees a half-written tree (the old tree is moved
# aside just before; between the two renames the path is briefly absent).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${HUSK_TARGET_DIR:-$repo/target/husk}
dest=$target/images/busybox
pkg=busybox-static

log() { printf 'build-busybox-rootfs: %s\n' "$*" >&2; }
die() { printf 'build-busybox-rootfs: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root: the rootfs holds files owned by root and by guest (1000:1000)"
umask 022

# One build at a time per destination: the lock also makes it safe to clear
# what an interrupted run left behind.
mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9

# The cheap check: apt's candidate is what `apt-get download` would fetch,
# and asking for it reads only the local package lists.
candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && [ -d "$dest/rootfs" ] \
    && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$candidate" ]; then
    log "$pkg $candidate already built at $dest/rootfs; skipping"
    exit 0
fi
log "building from $pkg ${candidate:-(no candidate in the package lists)} (have: $(cat "$dest/VERSION" 2>/dev/null || echo nothing))"

"$repo/scripts/install-deps.sh" guest   # readelf (binutils)

download=$(mktemp -d)
new=
old=
cleanup() {
    rm -rf "$download"
    [ -z "$new" ] || rm -rf --one-file-system "$new"
    [ -z "$old" ] || rm -rf --one-file-system "$old"
}
trap cleanup EXIT
rm -rf --one-file-system "$dest"/.rootfs.new.* "$dest"/.rootfs.old.* "$dest"/VERSION.tmp

# apt fetches as the _apt user: let it write the download directory, or apt
# warns and downloads unsandboxed.
if id _apt >/dev/null 2>&1; then
    chown _apt "$download"
fi
if ! ( cd "$download" && apt-get download -qq "$pkg" ) >/dev/null; then
    log "downloading $pkg failed; refreshing the package lists and retrying"
    apt-get update -qq
    ( cd "$download" && apt-get download -qq "$pkg" ) >/dev/null || die "cannot download $pkg"
fi
debs=("$download"/*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || die "expected one .deb in $download, found: ${debs[*]}"
deb=${debs[0]}
version=$(dpkg-deb -f "$deb" Version)
log "downloaded $(basename "$deb") ($version)"

dpkg-deb -x "$deb" "$download/x"
busybox=$download/x/bin/busybox
[ -f "$busybox" ] || die "$pkg has no bin/busybox"
if readelf -l "$busybox" | grep -q 'Requesting program interpreter'; then
    die "$busybox is dynamically linked; the rootfs has no loader"
fi

new=$(mktemp -d "$dest/.rootfs.new.XXXXXX")
chmod 0755 "$new"
install -d -m 0755 "$new"/{bin,sbin,usr,usr/bin,proc,sys,dev,dev/pts,run,etc,var,mnt,home}
install -d -m 1777 "$new"/{tmp,dev/shm}
install -d -m 0700 "$new/root"
install -d -m 0755 -o 1000 -g 1000 "$new/home/guest"
install -m 0755 "$busybox" "$new/bin/busybox"

# The applets, as the staged busybox lists them: links /bin/NAME -> busybox.
applets=0
while IFS= read -r applet; do
    case "$applet" in
        ''|busybox) continue ;;
        */*|.|..) die "unexpected applet name '$applet'" ;;
    esac
    ln -s busybox "$new/bin/$applet"
    applets=$((applets + 1))
done < <("$new/bin/busybox" --list)
[ -L "$new/bin/sh" ] || die "busybox has no sh applet"

cat > "$new/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
guest:x:1000:1000:guest:/home/guest:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$new/etc/group" <<'EOF'
root:x:0:
audio:x:29:guest
guest:x:1000:
tenants:x:2000:guest,root
nogroup:x:65534:
EOF
echo husk-test > "$new/etc/hostname"
cat > "$new/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
: > "$new/etc/resolv.conf"
chmod 0644 "$new"/etc/{passwd,group,hostname,hosts,resolv.conf}

# Publish: the new tree first, then the version that names it, so an
# interruption between the two leaves a stale VERSION and the next run rebuilds.
if [ -e "$dest/rootfs" ]; then
    old=$dest/.rootfs.old.$$
    mv -T "$dest/rootfs" "$old"
fi
mv -T "$new" "$dest/rootfs"
new=
printf '%s\n' "$version" > "$dest/VERSION.tmp"
mv -f "$dest/VERSION.tmp" "$dest/VERSION"
log "published $dest/rootfs ($pkg $version, $applets applets, $(du -sk "$dest/rootfs" | cut -f1) KiB)"
