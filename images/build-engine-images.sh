#!/usr/bin/env bash
# Packs the busybox test image (images/build-busybox-rootfs.sh) for the
# container engines, without a registry:
#   target/husk/images/busybox/engines/rootfs.tar   a tar of the rootfs, for
#       `podman import --change 'CMD ["/bin/sh"]' rootfs.tar NAME`
#   target/husk/images/busybox/engines/oci.tar      an OCI image layout made
#       with umoci (one image, tag "latest", CMD /bin/sh), for
#       `ctr image import --base-name NAME oci.tar`
# The engines' storage lives on the test host's tmpfs, so the imports
# themselves happen there (husk-engine-suite); this only builds the files.
# Skipped when the rootfs's VERSION and this script are unchanged.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${HUSK_TARGET_DIR:-$repo/target/husk}
image=$target/images/busybox
dest=$image/engines

log() { printf 'build-engine-images: %s\n' "$*" >&2; }
die() { printf 'build-engine-images: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root: the tars keep the rootfs's owners (root, guest 1000)"
[ -d "$image/rootfs" ] && [ -f "$image/VERSION" ] || die "$image/rootfs is missing: run images/build-busybox-rootfs.sh first"
"$repo/scripts/install-deps.sh" engines   # umoci

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9

stamp="$(cat "$image/VERSION") $(sha256sum < "$0" | cut -c1-16)"
if [ -f "$dest/rootfs.tar" ] && [ -f "$dest/oci.tar" ] && [ "$(cat "$dest/STAMP" 2>/dev/null)" = "$stamp" ]; then
    log "current ($stamp); skipping"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Numeric owners and sorted names: the same rootfs gives the same tar.
tar --numeric-owner --sort=name --mtime=@0 -C "$image/rootfs" -cf "$work/rootfs.tar" .

layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
cp -a "$image/rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$layout:latest" "$work/bundle"
umoci config --image "$layout:latest" --config.cmd /bin/sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --author husk --os linux --architecture amd64
umoci gc --layout "$layout"
tar --numeric-owner --sort=name -C "$layout" -cf "$work/oci.tar" .

# STAMP last: an interrupted run leaves an old or missing stamp, and the next
# run rebuilds.
rm -f "$dest/STAMP"
mv -f "$work/rootfs.tar" "$dest/rootfs.tar"
mv -f "$work/oci.tar" "$dest/oci.tar"
printf '%s\n' "$stamp" > "$dest/STAMP"
log "published $dest/{rootfs.tar,oci.tar} ($stamp)"
