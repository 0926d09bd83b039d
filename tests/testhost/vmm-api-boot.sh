#!/bin/sh
# Boots a microVM with husk-vmm through its API socket, the way the
# Firecracker getting-started guide does it with curl, and waits for the
# VMM to exit; prints the VMM's console and log, exits with its status.
#
# Environment: VMM, KERNEL, INITRD, BOOT_ARGS, VCPUS, MEM_MIB, and
# AFTER_READY: "wait" (let the guest power itself off), "ctrl-alt-del"
# (send SendCtrlAltDel once the agent's ready line is on the console) or
# "rss" (as ctrl-alt-del, after printing the VMM's resident memory with the
# guest idle: `rss_kib=<whole process> guest_rss_kib=<guest memory mapping>`).
# HARDENING (default "default"): "default" = seccomp, no jail; "no-seccomp";
# "jail" = seccomp and the built-in jail (kernel and initrd bound in);
# "none" = neither. The last line printed is `vmm_cpu_ms=<user+sys>`.
set -eu
work=$(mktemp -d)
sock=$work/api.sock
out=$work/vmm.out
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

api() {
    method=$1 path=$2 body=$3
    curl --fail-with-body --silent --show-error --unix-socket "$sock" -X "$method" "http://localhost$path" \
        -H 'Accept: application/json' -H 'Content-Type: application/json' -d "$body"
}

kernel=$KERNEL initrd=$INITRD
set --
case "${HARDENING:-default}" in
    default) ;;
    no-seccomp) set -- --no-seccomp ;;
    none|jail)
        [ "$HARDENING" = none ] && set -- --no-seccomp
        if [ "$HARDENING" = jail ]; then
            mkdir -m 0755 "$work/jail"
            set -- --jail "$work/jail" --jail-bind "$KERNEL:/vmlinux:ro" --jail-bind "$INITRD:/initrd:ro"
            kernel=/vmlinux initrd=/initrd
        fi ;;
    *) echo "vmm-api-boot: unknown HARDENING=$HARDENING"; exit 2 ;;
esac
"$VMM" --api-sock "$sock" --boot-timer --level Info "$@" >"$out" 2>&1 &
pid=$!
i=0
until [ -S "$sock" ]; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { echo "vmm-api-boot: no API socket after 30 s"; cat "$out"; exit 90; }
    sleep 0.05
done

api PUT /boot-source "{\"kernel_image_path\": \"$kernel\", \"initrd_path\": \"$initrd\", \"boot_args\": \"$BOOT_ARGS\"}"
api PUT /machine-config "{\"vcpu_count\": ${VCPUS:-1}, \"mem_size_mib\": ${MEM_MIB:-256}}"
api PUT /actions '{"action_type": "InstanceStart"}'

if [ "${AFTER_READY:-wait}" != wait ]; then
    i=0
    until grep -q 'husk-agent: ready' "$out"; do
        i=$((i + 1)); [ "$i" -lt 3000 ] || { echo "vmm-api-boot: no ready line after 300 s"; cat "$out"; exit 91; }
        sleep 0.1
    done
    if [ "$AFTER_READY" = rss ]; then
        # Let the guest settle into idle first.
        sleep 2
        guest_kib=$(( ${MEM_MIB:-256} * 1024 ))
        awk -v size="$guest_kib" '
            /^[0-9a-f]+-[0-9a-f]+ / { in_guest = 0 }
            /^Size:/ { in_guest = ($2 == size) }
            /^Rss:/ { total += $2; if (in_guest) guest += $2 }
            END { printf "rss_kib=%d guest_rss_kib=%d\n", total, guest }
        ' "/proc/$pid/smaps"
    fi
    api PUT /actions '{"action_type": "SendCtrlAltDel"}'
fi

# The VMM's CPU time: what the shell's reaped children used, across the
# wait (the API calls before it have all been reaped by then).
children_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }
before=$(children_ticks)
set +e
wait "$pid"
status=$?
set -e
cat "$out"
echo "vmm_cpu_ms=$(( ($(children_ticks) - before) * 1000 / $(getconf CLK_TCK) ))"
exit "$status"
