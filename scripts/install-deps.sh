#!/usr/bin/env bash
# Installs the Debian packages husk's build and tests need. Idempotent: a
# package that is already installed is not fetched again, so this is cheap to
# call from every entry point (README commands, .ci/run).
#
# Usage: scripts/install-deps.sh GROUP...
#   kernel    what kernel-config/build-kernel.sh needs (linux-source-6.12, toolchain)
#   guest     what the static agent and the initramfs need
#   testhost  QEMU and the pieces of the nested test host
#   engines   podman and containerd with their runtimes and networking, for
#             tests/tests/engines.rs (they run inside the test host, which
#             sees this machine's binaries), and umoci for their image
#   benches   the font benches/ draws its PNG plots with (DejaVu Sans,
#             loaded by the pure-Rust ab_glyph rasteriser: no freetype)
#   apitest   schemathesis (from PyPI, in a virtualenv at
#             ${HUSK_CACHE_DIR:-~/.cache/husk}/venv) for
#             vmm/tests/openapi_schemathesis.rs
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (apt-get install)"; exit 1
fi

declare -a want=()
need_backports=0
need_venv=0
for group in "$@"; do
    case "$group" in
        kernel) want+=(linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev cpio kmod lz4 xz-utils) ;;
        # libseccomp-dev: the static agent links libseccomp.a (youki's
        # libcontainer applies the specs' seccomp filters with it).
        guest) want+=(cpio binutils libseccomp-dev pkg-config) ;;
        # qemu-system-x86 and qemu-utils must come from the same suite: the plain
        # bookworm QEMU would replace the machine's backports qemu-utils.
        testhost) want+=(qemu-system-x86 qemu-utils kmod cpio curl); need_backports=1 ;;
        # netavark (podman's bridge networks) drives iptables (Debian's is the
        # nft variant); aardvark-dns is its DNS. podman comes without a
        # network backend otherwise, and with only one of crun and runc.
        engines) want+=(podman conmon crun runc containerd netavark aardvark-dns iptables umoci iproute2) ;;
        benches) want+=(fonts-dejavu-core) ;;
        # Debian's python3 with venv; schemathesis itself comes from PyPI below.
        apitest) want+=(python3 python3-venv); need_venv=1 ;;
        *) log "unknown group '$group'"; exit 2 ;;
    esac
done

missing=()
for pkg in $(printf '%s\n' "${want[@]}" | sort -u); do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
# The schemathesis virtualenv, pinned to the release the test's command line
# is written for; nothing is fetched when that release is already there.
install_venv() {
    local venv="${HUSK_CACHE_DIR:-$HOME/.cache/husk}/venv" version=4.32.5
    if "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $version"; then
        return
    fi
    log "installing schemathesis $version into $venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
}

if [ ${#missing[@]} -eq 0 ]; then
    if [ "$need_venv" = 1 ]; then install_venv; fi
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ "$need_backports" = 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding Debian's bookworm-backports suite (QEMU 10)"
    cat > /etc/apt/sources.list.d/husk-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
log "installing: ${missing[*]}"
apt-get update -qq
backports_pkgs=()
plain_pkgs=()
for pkg in "${missing[@]}"; do
    case "$pkg" in
        qemu-system-x86|qemu-utils) backports_pkgs+=("$pkg") ;;
        *) plain_pkgs+=("$pkg") ;;
    esac
done
if [ ${#plain_pkgs[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${plain_pkgs[@]}" >/dev/null
fi
if [ ${#backports_pkgs[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
if [ "$need_venv" = 1 ]; then install_venv; fi
