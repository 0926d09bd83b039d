#!/usr/bin/env bash
# Builds the cargo fuzz targets of husk-vmm (vmm/fuzz) and runs each for a
# bounded time: what a hostile guest can put in virtqueues (virtio-net,
# virtio-vsock and its connections, virtio-fs and its FUSE server, the
# virtio-mmio registers), the agent protocol's frames and the HTTP API.
#
#   scripts/fuzz.sh                        every target, 15 s each (CI)
#   scripts/fuzz.sh --seconds 600          every target, 10 minutes each
#   scripts/fuzz.sh --target fuse --seconds 3600
#   scripts/fuzz.sh --list
#
# Corpora grow in ~/.cache/husk/fuzz/<target> (HUSK_FUZZ_CORPUS overrides),
# starting from the committed seeds (vmm/fuzz/seeds/<target>) and crash
# regressions (vmm/fuzz/regressions/<target>), which libFuzzer reads but
# never writes. Per target it prints the total executions and executions
# per second, also written to target/fuzz-summary.md. A crash, hang
# (-timeout) or runaway allocation (-rss_limit_mb) leaves its input under
# target/fuzz-artifacts/<target>/ and makes the script exit non-zero. To
# keep it fixed, copy it to vmm/fuzz/regressions/<target>/: `cargo test -p
# husk-vmm` replays that directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

seconds=15
targets=()
list=false
while (($#)); do
    case "$1" in
        --seconds)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds takes a positive number" >&2; exit 2; }
            seconds=$2
            shift 2
            ;;
        --target)
            [[ -n ${2:-} ]] || { echo "fuzz.sh: --target takes a target name (see --list)" >&2; exit 2; }
            targets+=("$2")
            shift 2
            ;;
        --list) list=true; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

all_targets=()
for file in vmm/fuzz/fuzz_targets/*.rs; do
    all_targets+=("$(basename "$file" .rs)")
done
if $list; then
    printf '%s\n' "${all_targets[@]}"
    exit 0
fi
if ((${#targets[@]} == 0)); then
    targets=("${all_targets[@]}")
fi
for target in "${targets[@]}"; do
    [[ -f vmm/fuzz/fuzz_targets/$target.rs ]] || {
        echo "fuzz.sh: no fuzz target $target (targets: ${all_targets[*]})" >&2
        exit 2
    }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz passes nightly-only flags (-Zsanitizer, coverage options);
# this lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
fuzz_target_dir=$repo/target/fuzz
logs=$repo/target/fuzz-logs
mkdir -p "$logs"
build() {
    (cd vmm && cargo fuzz build --target-dir "$fuzz_target_dir" "$@") >>"$logs/build.log" 2>&1 || {
        tail -n 60 "$logs/build.log" >&2
        echo "fuzz.sh: building the fuzz targets failed (log: $logs/build.log)" >&2
        exit 1
    }
}
: >"$logs/build.log"
started=$SECONDS
if ((${#targets[@]} == ${#all_targets[@]})); then
    build
else
    for target in "${targets[@]}"; do
        build "$target"
    done
fi
echo "fuzz.sh: built ${#targets[@]} target(s) in $((SECONDS - started)) s"
bin_dir=$fuzz_target_dir/x86_64-unknown-linux-gnu/release

corpus_root=${HUSK_FUZZ_CORPUS:-$HOME/.cache/husk/fuzz}
artifacts_root=$repo/target/fuzz-artifacts
summary=$repo/target/fuzz-summary.md
{
    echo "# Fuzzing: $seconds s per target ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "| target | seconds | executions | executions/s | corpus | result |"
    echo "|---|---:|---:|---:|---:|---|"
} >"$summary"

failed=()
for target in "${targets[@]}"; do
    corpus=$corpus_root/$target
    artifacts=$artifacts_root/$target
    mkdir -p "$corpus" "$artifacts" "vmm/fuzz/regressions/$target"
    log=$logs/$target.log
    # A hang (an input running over -timeout seconds) and an allocation
    # beyond -rss_limit_mb are failures like a crash. A file grown past
    # the targets' size limit is not (-handle_xfsz=0): the guest gets
    # EFBIG. The first corpus directory takes new inputs; the committed
    # ones are only read.
    extra=()
    asan_options=${ASAN_OPTIONS:-}
    if [[ $target == api_http ]]; then
        # The API server's threads outlive the inputs (its connection
        # threads end after the client sees the connection close, its
        # accept loop never): LeakSanitizer, checking between inputs and at
        # exit, takes what they hold for leaks.
        extra=(-detect_leaks=0)
        asan_options=${asan_options:+$asan_options:}detect_leaks=0
    fi
    status=0
    ASAN_OPTIONS=$asan_options "$bin_dir/$target" "${extra[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -handle_xfsz=0 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "$corpus" "vmm/fuzz/seeds/$target" "vmm/fuzz/regressions/$target" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    inputs=$(find "$corpus" -type f | wc -l)
    result=ok
    if ((status != 0)); then
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="FAILED (exit $status): ${crash:-see $log}"
        failed+=("$target: ${crash:-see $log}")
        tail -n 40 "$log" >&2
    fi
    printf '%-16s %10s runs in %4s s, %7s exec/s, corpus %5s: %s\n' \
        "$target" "${runs:-?}" "${took:-$seconds}" "${per_second:-?}" "$inputs" "$result"
    echo "| $target | ${took:-$seconds} | ${runs:-?} | ${per_second:-?} | $inputs | $result |" >>"$summary"
done
echo "summary: $summary"
if ((${#failed[@]})); then
    echo "fuzz.sh: ${#failed[@]} target(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
