#!/bin/busybox sh
# /init of the nested test host (a QEMU TCG machine running Debian's kernel).
# Loads KVM and the virtio/9p drivers, mounts this machine's root file system
# read-only and the repository read-write at their own paths, and starts the
# husk-testhost runner chrooted into that tree, so test programs run with the
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
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
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
chroot /host "$runner" serve --listen 0.0.0.0:7000 --idle-secs "$idle"
echo "husk-testhost init: runner exited ($?), powering off"
sync
poweroff -f
