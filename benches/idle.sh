#!/usr/bin/env bash
# Idle service benchmark: RSS and wake-ups of `seedq serve` with an empty queue.
#
#   benches/idle.sh [SECONDS]        (default 60; builds the release binary first)
#   SEEDQ_BIN=path benches/idle.sh   (measure another build)
#
# It starts `seedq serve` with the default configuration (archive into a temp dir, admin
# server on a free loopback port, all maintenance schedules on) and an empty database, lets it
# settle, then reads /proc: resident memory (VmRSS, and the peak VmHWM) and the context
# switches of all its threads over the window. A thread that sleeps and wakes costs one
# voluntary switch, so switches per second is the wake-up rate. No Ark call is made (the
# queue is empty), so the API key is a dummy and the base URL points nowhere.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
settle=5
if [[ -z "${SEEDQ_BIN:-}" ]]; then
    cargo build --release --quiet
    SEEDQ_BIN=target/release/seedq
fi
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/config.toml" <<TOML
[store]
path = "$dir/seedq.db"
[ark]
base_url = "http://127.0.0.1:9/api/v3"
[archive]
url = "file://$dir/archive"
[admin]
listen = "127.0.0.1:0"
TOML
ARK_API_KEY=idle-bench RUST_LOG=seedq=warn "$SEEDQ_BIN" --config "$dir/config.toml" serve 2>"$dir/log" &
pid=$!
sleep "$settle"
kill -0 "$pid" || { cat "$dir/log"; exit 1; }

# Voluntary switches only: involuntary ones are preemptions by other load on the machine.
switches() {
    cat /proc/"$pid"/task/*/status 2>/dev/null |
        awk '/^voluntary_ctxt_switches/ {t += $2} END {print t + 0}'
}
cpu_ticks() { awk '{print $14 + $15}' /proc/"$pid"/stat; }
kb() { awk -v k="$1" '$1 == k":" {print $2}' /proc/"$pid"/status; }

s0=$(switches); c0=$(cpu_ticks)
sleep "$secs"
s1=$(switches); c1=$(cpu_ticks)
rss=$(kb VmRSS); hwm=$(kb VmHWM); threads=$(kb Threads)
hz=$(getconf CLK_TCK)
awk -v s="$secs" -v sw=$((s1 - s0)) -v ticks=$((c1 - c0)) -v hz="$hz" -v rss="$rss" -v hwm="$hwm" -v th="$threads" 'BEGIN {
    printf "idle %d s: RSS %.1f MiB (peak %.1f MiB), %d threads, %.2f wake-ups/s, CPU %.3f%%\n",
        s, rss / 1024, hwm / 1024, th, sw / s, 100 * ticks / hz / s
}'
