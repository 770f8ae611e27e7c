#!/usr/bin/env bash
# Runs the whole benchmark report: the load scenarios over loopback for tower-sse and its two
# baselines (axum's Sse over a broadcast channel, bare hyper), a memory attribution run, and
# the criterion benches; writes target/bench/results.json and draws docs/bench.svg. The issue-12
# scenarios (stuck clients, garbage ids, memory after a flood per allocator) go to
# target/bench/memory.jsonl.
#
# Usage: scripts/bench.sh [extra loadgen options...]
#   BENCH_SKIP_CRITERION=1   skip the criterion benches
#   BENCH_SKIP_LOAD=1        skip the load scenarios (reuse target/bench/load.jsonl)
#   CRITERION_ARGS="..."     criterion options (default: --warm-up-time 0.5 --measurement-time 1 --noplot)
#
# Takes about 15 minutes on a 2-core machine. Figures are only meaningful on an otherwise
# idle machine: the script warns when the load average is high.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
mkdir -p "$OUT" docs

# Up to ~19,000 connections per side: raise the open-file limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open-file limit: $(ulimit -n)"

load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "warning: load average is $load; other work on this machine will skew the figures" >&2
fi

echo "== building (release): the load server with each allocator, then the default (glibc)"
for alloc in jemalloc mimalloc; do
    cargo build --release -p loadtest --features "$alloc"
    cp target/release/loadserver "$OUT/loadserver-$alloc"
done
cargo build --release -p loadtest
cp target/release/loadserver "$OUT/loadserver-glibc"

echo "== machine"
python3 - "$OUT/machine.json" <<'EOF'
import json, os, platform, re, subprocess, sys, time
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
cpuinfo = open("/proc/cpuinfo").read()
model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
mem = re.search(r"MemTotal:\s*(\d+) kB", open("/proc/meminfo").read())
machine = {
    "nproc": os.cpu_count(),
    "cpu": model.group(1).strip() if model else platform.processor(),
    "mem_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
    "kernel": platform.release(),
    "rustc": sh("rustc", "--version"),
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    "open_file_limit": sh("sh", "-c", "ulimit -n"),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "git": sh("git", "rev-parse", "--short", "HEAD"),
    # Uncommitted changes to the crate itself (other work in progress) change the figures.
    "git_dirty": sh("git", "status", "--porcelain", "--", "src", "loadtest", "Cargo.toml", "Cargo.lock").splitlines(),
}
json.dump(machine, open(sys.argv[1], "w"), indent=1)
print(json.dumps(machine))
EOF

LOADGEN=target/release/loadgen
# The three stacks of issue 6, every scenario.
MAIN_CMD="$LOADGEN --modes tower-sse,axum-broadcast,hyper-bare --scenarios fanout,latency,idle,slow,churn $*"
# The kernel's floor for fan-out and latency: no HTTP library, one write per event.
RAW_CMD="$LOADGEN --modes tokio-raw --scenarios fanout,latency $*"
# Attribution: the crate without axum::serve (bare hyper loop), memory and churn.
ATTR_CMD="$LOADGEN --modes tower-sse-hyper,tower-sse:hyper,axum-broadcast:hyper --scenarios idle --idle-secs 2 $*"
ATTR_CHURN_CMD="$LOADGEN --modes tower-sse-hyper --scenarios churn $*"
# Issue 12: hostile clients, and memory after a flood with each allocator (target/bench/memory.jsonl).
HOSTILE_CMD="$LOADGEN --modes tower-sse --scenarios stuck,garbage-id $*"
# The control of garbage-id: idle clients that get one event each, as each garbage-id client
# gets its gap event.
HELLO_CMD="$LOADGEN --modes tower-sse --scenarios garbage-id --garbage-hello 1 $*"
# Issue 15: the Redis backplane (each scenario starts its own redis-server on a free
# loopback port; target/bench/backplane.jsonl).
BACKPLANE_CMD="$LOADGEN --modes tower-sse --scenarios backplane,backplane-cost,backplane-rate $*"
FLOOD_CMDS=(
    "$LOADGEN --server $OUT/loadserver-glibc --modes tower-sse,hyper-bare --scenarios flood $*"
    "$LOADGEN --server $OUT/loadserver-jemalloc --modes tower-sse,hyper-bare --scenarios flood $*"
    "$LOADGEN --server $OUT/loadserver-mimalloc --modes tower-sse --scenarios flood $*"
)
CRITERION_ARGS=${CRITERION_ARGS:---warm-up-time 0.5 --measurement-time 1 --noplot}

if [ -z "${BENCH_SKIP_LOAD:-}" ]; then
    rm -f "$OUT/load.jsonl"
    echo "== load scenarios: $MAIN_CMD"
    # shellcheck disable=SC2086
    $MAIN_CMD --out "$OUT/load.jsonl" > /dev/null 2> >(tee "$OUT/loadgen.log" >&2)
    for cmd in "$RAW_CMD" "$ATTR_CMD" "$ATTR_CHURN_CMD"; do
        echo "== $cmd"
        # shellcheck disable=SC2086
        $cmd --out "$OUT/load.jsonl" > /dev/null 2> >(tee -a "$OUT/loadgen.log" >&2)
    done
    rm -f "$OUT/memory.jsonl"
    for cmd in "$HOSTILE_CMD" "$HELLO_CMD" "${FLOOD_CMDS[@]}"; do
        echo "== $cmd"
        # shellcheck disable=SC2086
        $cmd --out "$OUT/memory.jsonl" > /dev/null 2> >(tee -a "$OUT/loadgen.log" >&2)
    done
    rm -f "$OUT/backplane.jsonl"
    if command -v redis-server >/dev/null 2>&1; then
        echo "== $BACKPLANE_CMD"
        # shellcheck disable=SC2086
        $BACKPLANE_CMD --out "$OUT/backplane.jsonl" > /dev/null 2> >(tee -a "$OUT/loadgen.log" >&2)
    else
        echo "warning: no redis-server (apt-get install redis-server): backplane scenarios skipped" >&2
    fi
fi

criterion_files=()
if [ -z "${BENCH_SKIP_CRITERION:-}" ]; then
    for bench in $(awk '/^\[\[bench\]\]/ { b = 1; next } b && /^name *=/ { gsub(/[" ]/, "", $0); sub(/name=/, "", $0); print; b = 0 }' Cargo.toml); do
        echo "== cargo bench --bench $bench -- $CRITERION_ARGS"
        # shellcheck disable=SC2086
        cargo bench --bench "$bench" -- $CRITERION_ARGS 2>&1 | tee "$OUT/criterion-$bench.txt"
        criterion_files+=("$OUT/criterion-$bench.txt")
    done
    # Issue 14: the same benches with the crate's metrics and tracing on, a Prometheus
    # recorder and an INFO subscriber installed (benches/support/telemetry.rs). Compare
    # with the lines above; target/bench/telemetry-*.txt are not part of the chart.
    for bench in fanout layer; do
        echo "== cargo bench --bench $bench --features metrics,tracing -- $CRITERION_ARGS"
        # shellcheck disable=SC2086
        cargo bench --bench "$bench" --features metrics,tracing -- $CRITERION_ARGS 2>&1 \
            | tee "$OUT/telemetry-$bench.txt"
    done
else
    for f in "$OUT"/criterion-*.txt; do
        [ -e "$f" ] && criterion_files+=("$f")
    done
fi

python3 - "$OUT/commands.json" "$MAIN_CMD" "$RAW_CMD" "$ATTR_CMD" "$ATTR_CHURN_CMD" "$CRITERION_ARGS" <<'EOF'
import json, sys
json.dump({"load": sys.argv[2], "kernel_floor": sys.argv[3], "attribution": sys.argv[4],
           "attribution_churn": sys.argv[5],
           "criterion": "cargo bench --bench NAME -- " + sys.argv[6]}, open(sys.argv[1], "w"), indent=1)
EOF

echo "== report"
python3 scripts/chart.py --load "$OUT/load.jsonl" --machine "$OUT/machine.json" \
    --commands "$OUT/commands.json" --criterion "${criterion_files[@]}" \
    --json "$OUT/results.json" --svg docs/bench.svg --markdown "$OUT/summary.md"
echo "wrote $OUT/results.json, $OUT/summary.md and docs/bench.svg"
