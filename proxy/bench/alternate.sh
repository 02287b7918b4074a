#!/usr/bin/env bash
# Two builds of fulcrum-proxy, or one and haproxy, against each other: plaintext HTTP/1.1
# keep-alive on loopback.
#
#   proxy/bench/alternate.sh A B [ROUNDS] [SECONDS]   (default 16 rounds of 3 s)
#
# A and B are fulcrum-proxy binaries (a build kept aside, target/release/fulcrum-proxy),
# or the word `haproxy`. Both run at once in front of the same nginx backend, each with
# WORKERS threads (default 1; haproxy's nbthread), and wrk (-t2 -c32) loads one and then
# the other, the order swapped every round. On a small shared VM one run of a few seconds
# differs from the next by a quarter, more than most changes to the request path; taking
# turns many times puts the slow spells on both alike. Prints each round, then the totals:
# req/s and the CPU a request (user and system µs, from /proc) of each, and B's
# throughput over A's. Installs wrk and nginx (and haproxy) from Debian if missing.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
A=$1 B=$2 ROUNDS=${3:-16} SECS=${4:-3} WORKERS=${WORKERS:-1}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=proxy/bench/tools.sh
. "$ROOT/proxy/bench/tools.sh"
tools=(wrk nginx)
for side in "$A" "$B"; do
  if [ "$side" = haproxy ]; then
    tools+=(haproxy)
  elif [ ! -x "$side" ]; then
    echo "$side: not an executable (a fulcrum-proxy binary, or haproxy)" >&2; exit 2
  fi
done
ensure_tools "${tools[@]}"

work_dir fulcrum-alternate

# Ports: 194xx on 127.0.0.1, apart from compare.sh's.
BACKEND=19480
mkdir -p "$WORK/backend" "$WORK/plain"
backend_conf "$WORK/backend" $BACKEND >"$WORK/backend/nginx.conf"
nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)
bench_entry $BACKEND r1/z1 a >"$WORK/plain/bench.yaml"
wait_port $BACKEND

# start SIDE PORT: starts SIDE listening on PORT (its admin on PORT + 1); prints its PID.
start() {
  local side=$1 port=$2
  if [ "$side" = haproxy ]; then
    haproxy_plain "$port" $BACKEND "$WORKERS" >"$WORK/haproxy-$port.cfg"
    haproxy -f "$WORK/haproxy-$port.cfg" -db >/dev/null &
  else
    RUST_LOG=warn "$side" --cluster a --locality r1/z1 --config "$WORK/plain" \
      --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))" --workers "$WORKERS" >/dev/null &
  fi
  echo $!
}
A_PORT=19481 B_PORT=19483
A_PID=$(start "$A" $A_PORT); PIDS+=("$A_PID")
B_PID=$(start "$B" $B_PORT); PIDS+=("$B_PID")
wait_port $A_PORT
wait_port $B_PORT

CLK_TCK=$(getconf CLK_TCK)
# load PORT PID: one wrk run; prints "requests user-ticks system-ticks".
load() {
  local port=$1 pid=$2 u0 s0 u1 s1 out
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(wrk -t2 -c32 -d"${SECS}s" -H "Host: bench.local" "http://127.0.0.1:$port/")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "127.0.0.1:$port answered other than 2xx:" >&2; echo "$out" >&2; exit 1
  fi
  echo "$(awk '/requests in/ {print $1}' <<<"$out") $((u1 - u0)) $((s1 - s0))"
}
name() { [ "$1" = haproxy ] && echo haproxy || basename "$1"; }

echo "alternate.sh: A $(name "$A"), B $(name "$B"), $WORKERS worker(s) each, $ROUNDS rounds of ${SECS}s each way, $(nproc) cores"
# Warm both (connections to the backend opened, first allocations made).
load $A_PORT "$A_PID" >/dev/null
load $B_PORT "$B_PID" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then
    a=$(load $A_PORT "$A_PID"); b=$(load $B_PORT "$B_PID")
  else
    b=$(load $B_PORT "$B_PID"); a=$(load $A_PORT "$A_PID")
  fi
  echo "$round $a $b"
done | awk -v s="$SECS" -v hz="$CLK_TCK" '
  function us(t, n) { return t / hz * 1000000 / n }
  {
    na += $2; ua += $3; sa += $4; nb += $5; ub += $6; sb += $7
    printf "round %2d   A %7.0f req/s  user %5.2f sys %5.2f us   B %7.0f req/s  user %5.2f sys %5.2f us\n",
      $1, $2 / s, us($3, $2), us($4, $2), $5 / s, us($6, $5), us($7, $5)
  }
  END {
    printf "total      A %7.0f req/s  user %5.2f sys %5.2f us   B %7.0f req/s  user %5.2f sys %5.2f us   B/A %.3f\n",
      na / NR / s, us(ua, na), us(sa, na), nb / NR / s, us(ub, nb), us(sb, nb), nb / na
  }'
