#!/bin/busybox sh
# /init of the nested test host (a QEMU TCG machine running Debian's kernel).
# Loads KVM and the virtio/9p drivers, mounts this machine's root file system
# read-only and the repository read-write at their own paths, and starts the
# husk-testhost runner with that tree as its root, so test programs run with the
# host's binaries and libraries against the host's paths.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "husk-testhost init: $*"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r module; do
    insmod "/$module" || fail "insmod $module failed"
done < /modules.order

work= runner= idle=300
for param in $(cat /proc/cmdline); do
    case "$param" in
        husk_testhost.work=*) work=${param#*=} ;;
        husk_testhost.runner=*) runner=${param#*=} ;;
        husk_testhost.idle=*) idle=${param#*=} ;;
    esac
done
[ -n "$work" ] && [ -n "$runner" ] || fail "husk_testhost.work and husk_testhost.runner must be on the command line"
[ -e /dev/kvm ] || fail "kvm_amd loaded but /dev/kvm is missing (does QEMU expose SVM? -cpu max does)"

opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "mounting the host root (9p) failed"

# The kernel package's whole module tree, kept in the image's cache entry
# (see build-host-image.sh), becomes /lib/modules/<kver> here and in the
# chroot: the kernel's module requests (netfilter, bridge, overlay, traffic
# control…) run /sbin/modprobe in this root, busybox's, which reads its
# modules.dep and modules.alias; modprobe in the chroot is the host's kmod.
kver=$(uname -r)
tree=$(cat /modules.tree)
[ "${tree##*/}" = "$kver" ] || fail "the image's module tree $tree is not for the running kernel $kver"
[ -f "/host$tree/modules.dep" ] || fail "the module tree $tree is missing; rerun tests/testhost/build-host-image.sh"
mount --bind "/host$tree" "/lib/modules/$kver" || fail "binding the module tree failed"
mkdir -p /sbin
ln -sf /bin/busybox /sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
if [ -d /host/lib/modules ]; then
    mount --bind "/host${tree%/*}" /host/lib/modules || fail "binding the module tree into the chroot failed"
else
    echo "husk-testhost init: this machine has no /lib/modules; modprobe in the chroot will not find modules"
fi

mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
# cgroup v2 only: no systemd here; podman (cgroupfs manager), crun, runc
# and husk's host-side placement all use the unified hierarchy.
mount -t cgroup2 -o nsdelegate cgroup2 /host/sys/fs/cgroup || fail "mounting cgroup2 failed"
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=0755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
# The repository last, so that one under /tmp or /run is not hidden by the
# tmpfs mounted there. cache=mmap: binaries built while the host is up are
# seen at once and can be executed.
mkdir -p "/host$work"
mount -t 9p -o "$opts,cache=mmap" work "/host$work" || fail "mounting $work (9p) failed"

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

echo "husk-testhost init: kvm ready, runner $runner"
# The host tree becomes the mount on "/" (as switch_root does), and the
# runner is chrooted into it. A plain chroot into /host would leave the
# initramfs as the root of every mount namespace: a container runtime's
# pivot_root then puts the container's root where /host was, and `exec`
# into a container (setns to its mount namespace lands on the namespace's
# root) would run in the initramfs instead of the container. This shell
# keeps the initramfs as its own root (its busybox powers off below), and
# so does the kernel's module loader (/sbin/modprobe above).
cd /host
mount --move . / || fail "moving the host tree onto / failed"
chroot . "$runner" serve --listen 0.0.0.0:7000 --idle-secs "$idle"
echo "husk-testhost init: runner exited ($?), powering off"
sync
poweroff -f
