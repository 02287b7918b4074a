#!/usr/bin/env bash
# fulcrum-proxy against haproxy and nginx, in one run, on loopback.
#
#   proxy/bench/compare.sh [SECONDS] [ROUNDS]   (default 10 s per load run, 1 round)
#
# With more than one round, every section runs ROUNDS times with the proxies taking turns,
# each round starting with the next proxy (so that a noisy neighbour on a shared machine
# hits them alike), and the medians of each figure are printed at the end.
#
# Installs wrk, haproxy, nginx and python3 from Debian when they are missing, builds the
# release binaries, and starts everything itself in a temporary directory (removed at the
# end).
# A fixed backend (nginx, one worker, a 3-byte answer) is measured:
#   - directly, through fulcrum-proxy, through haproxy and through nginx: plaintext
#     HTTP/1.1 keep-alive, wrk with 32 connections;
#   - across a proxy-to-proxy mTLS hop: fulcrum-proxy -> fulcrum-proxy (h2 over mTLS,
#     weights from a one-node coordinator, all mTLS), haproxy -> haproxy (TLS, client certificates
#     verified) and nginx -> nginx (the same);
#   - on a single connection, for the latency each proxy adds;
#   - with many connections open and idle (IDLE_CONNECTIONS, 2,000 by default), before
#     and after one request on each, for the memory a waiting connection costs.
# For each it prints req/s, p50/p99 latency, the proxy processes' CPU time per request
# (user + system, from /proc; across the fulcrum hop, each proxy's share too), and their
# RSS idle and after load.
set -euo pipefail

SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-1}"
CONNECTIONS=32
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-2000}"
# Room for the idle connections, in this shell and the proxies it starts.
if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge $((2 * IDLE_CONNECTIONS + 256)) ]; then
  ulimit -n $((2 * IDLE_CONNECTIONS + 256))
else
  IDLE_CONNECTIONS=$((($(ulimit -Hn) - 256) / 2))
  ulimit -n "$(ulimit -Hn)"
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=proxy/bench/tools.sh
. "$ROOT/proxy/bench/tools.sh"
work_dir fulcrum-bench
ensure_tools wrk haproxy nginx python3

echo "building release binaries..." >&2
(cd "$ROOT" && cargo build --release --locked -q --bin fulcrum-proxy --bin fulcrum-coordinator --bin fulcrumctl)
BIN="$ROOT/target/release"

# Ports: 19xxx on 127.0.0.1.
BACKEND=19080
FULCRUM=19101; FULCRUM_ADMIN=19102
HAPROXY=19201
NGINX=19301
FULCRUM_A=19111; FULCRUM_A_ADMIN=19112; FULCRUM_B_ADMIN=19122; FULCRUM_B_EW=19123
COORDINATOR=19130
HAPROXY_A=19211; HAPROXY_B=19212
NGINX_A=19311; NGINX_B=19312

# CPU ticks (user + system) of PIDs and their threads.
ticks() {
  local total=0 pid
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

# RSS in KiB of PIDs, summed.
rss() {
  local total=0 pid
  for pid in "$@"; do
    if [ -r "/proc/$pid/status" ]; then
      total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
    fi
  done
  echo "$total"
}

# The PIDs of a process and its children (nginx workers).
family() {
  local pid=$1
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}

# wrk's latency, in microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") print n; else if (u == "ms") print n * 1000; else if (u == "s") print n * 1000000; else print n
  }'
}

CLK_TCK=$(getconf CLK_TCK)

# run NAME PORT CONNECTIONS SECONDS PIDS...: prints one result line.
run() {
  local name=$1 port=$2 conns=$3 secs=$4; shift 4
  local pids=("$@")
  local before after out rps requests p50 p99 cpu_us idle loaded
  idle=$(rss "${pids[@]}")
  before=$(ticks "${pids[@]}")
  local each_before=() pid
  for pid in "${pids[@]}"; do each_before+=("$(ticks "$pid")"); done
  out=$(wrk -t"$((conns < 2 ? conns : 2))" -c"$conns" -d"${secs}s" --latency -H "Host: bench.local" "http://127.0.0.1:$port/")
  after=$(ticks "${pids[@]}")
  loaded=$(rss "${pids[@]}")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$name: answers that were not 2xx:" >&2; echo "$out" >&2; exit 1
  fi
  rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  if [ "${#pids[@]}" -gt 0 ] && [ "$requests" -gt 0 ]; then
    cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN {printf "%.1f", t / hz * 1000000 / r}')
  else
    cpu_us="-"
  fi
  printf "%-34s %9s %10s %10s %12s %9s %9s\n" "$name" "$rps" "$p50" "$p99" "$cpu_us" \
    "$([ "${#pids[@]}" -gt 0 ] && echo $((idle / 1024)) || echo -)" \
    "$([ "${#pids[@]}" -gt 0 ] && echo $((loaded / 1024)) || echo -)"
  # Two processes (the fulcrum hop): each one's share too.
  if [ "${#pids[@]}" -eq 2 ] && [ "$requests" -gt 0 ]; then
    local i share=()
    for i in 0 1; do
      share+=("$(awk -v t=$(($(ticks "${pids[$i]}") - each_before[i])) -v hz="$CLK_TCK" \
        -v r="$requests" 'BEGIN {printf "%.1f", t / hz * 1000000 / r}')")
    done
    printf "  %-32s sending %s us, serving %s us a request\n" "each proxy" "${share[0]}" "${share[1]}"
  fi
  echo "$p50" >"$WORK/p50-${name//[^A-Za-z0-9-]/_}"
  echo "$rps $p50 $p99 $cpu_us" >>"$WORK/runs-${name//[^A-Za-z0-9-]/_}"
}

# idle_memory NAME PORT PIDS...: the RSS each of IDLE_CONNECTIONS connections adds while
# open and idle, then after one request on each (sent one connection at a time, so that
# what requests in flight hold is not counted), against the RSS before they opened. In
# Python: bash writes a request line by line, and Nagle's algorithm then holds each
# request's last lines for the proxy's delayed ACK.
idle_memory() {
  python3 - "$IDLE_CONNECTIONS" "$@" <<'EOF'
import socket, sys, time
count, name, port, pids = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def rss():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total += next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
    return total
before = rss()
connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
time.sleep(1)  # accepted and settled
opened = rss()
answered = 0
for c in connections:
    c.sendall(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")
    c.settimeout(5)
    answered += c.recv(65536).startswith(b"HTTP/1.1 200")
time.sleep(1)
after = rss()
for c in connections:
    c.close()
print(f"{name:<34} {before / 1024:9.1f} {(opened - before) / count:9.1f} {(after - before) / count:9.1f} {answered:9d}")
EOF
}

# median NAME COLUMN: the median of a figure (1 req/s, 2 p50, 3 p99, 4 CPU) over the
# rounds.
median() {
  sort -n -k"$2,$2" "$WORK/runs-${1//[^A-Za-z0-9-]/_}" | awk -v c="$2" '
    { v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}

# medians NAME...: one line per name with the median of each figure.
medians() {
  local name
  for name in "$@"; do
    printf "%-34s %9s %10s %10s %12s\n" "$name" "$(median "$name" 1)" "$(median "$name" 2)" \
      "$(median "$name" 3)" "$(median "$name" 4)"
  done
}

header() {
  echo
  echo "$1"
  printf "%-34s %9s %10s %10s %12s %9s %9s\n" "" "req/s" "p50 us" "p99 us" "CPU us/req" "RSS MB" "loaded"
}

# --- the backend ---------------------------------------------------------------------
mkdir -p "$WORK/nginx-backend"
backend_conf "$WORK/nginx-backend" $BACKEND >"$WORK/nginx-backend/nginx.conf"
nginx -c "$WORK/nginx-backend/nginx.conf" -p "$WORK/nginx-backend" & PIDS+=($!)
wait_port $BACKEND

# --- certificates and mesh configuration ----------------------------------------------
"$BIN/fulcrumctl" certs init --trust-domain bench.local --out "$WORK/certs" \
  --coordinators 1 --clusters a,b --admins ops >/dev/null
cat "$WORK/certs/proxy-a.pem" "$WORK/certs/proxy-a-key.pem" >"$WORK/certs/a-bundle.pem"
cat "$WORK/certs/proxy-b.pem" "$WORK/certs/proxy-b-key.pem" >"$WORK/certs/b-bundle.pem"

mkdir -p "$WORK/plain" "$WORK/mesh"
bench_entry $BACKEND r1/z1 a >"$WORK/plain/bench.yaml"
# The hop: the endpoint is in cluster b only, so cluster a's row sends everything there.
cat >"$WORK/mesh/bench.yaml" <<EOF
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: a}
spec: {locality: r1/z1}
---
apiVersion: fulcrum.dev/v1alpha1
kind: MeshCluster
metadata: {name: b}
spec:
  locality: r2/z1
  eastWestGateways: [{address: 127.0.0.1, port: $FULCRUM_B_EW}]
---
EOF
bench_entry $BACKEND r2/z1 b >>"$WORK/mesh/bench.yaml"

# --- plaintext proxies ------------------------------------------------------------------
RUST_LOG=warn "$BIN/fulcrum-proxy" --cluster a --locality r1/z1 --config "$WORK/plain" \
  --listen 127.0.0.1:$FULCRUM --admin 127.0.0.1:$FULCRUM_ADMIN & FULCRUM_PID=$!; PIDS+=($!)

haproxy_plain $HAPROXY $BACKEND >"$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db & HAPROXY_PID=$!; PIDS+=($!)

mkdir -p "$WORK/nginx-proxy"
cat >"$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes auto;
daemon off;
error_log stderr error;
pid $WORK/nginx-proxy/pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy" & NGINX_PID=$!; PIDS+=($!)
wait_port $FULCRUM; wait_port $HAPROXY; wait_port $NGINX
sleep 0.5 # nginx forks its workers after it listens

# --- mTLS hop proxies ---------------------------------------------------------------------
"$BIN/fulcrum-coordinator" --node-id 1 --listen 127.0.0.1:$COORDINATOR --data-dir "$WORK/coordinator" \
  --certs "$WORK/certs" --init --config-dir "$WORK/mesh" >"$WORK/coordinator.log" 2>&1 & PIDS+=($!)
wait_port $COORDINATOR
RUST_LOG=warn "$BIN/fulcrum-proxy" --cluster b --locality r2/z1 --coordinators 127.0.0.1:$COORDINATOR \
  --certs "$WORK/certs" --state-dir "$WORK/state-b" --east-west 127.0.0.1:$FULCRUM_B_EW \
  --listen 127.0.0.1:19121 --admin 127.0.0.1:$FULCRUM_B_ADMIN 2>/dev/null &
FULCRUM_B_PID=$!; PIDS+=($!)
RUST_LOG=warn "$BIN/fulcrum-proxy" --cluster a --locality r1/z1 --coordinators 127.0.0.1:$COORDINATOR \
  --certs "$WORK/certs" --state-dir "$WORK/state-a" --east-west 127.0.0.1:19113 \
  --listen 127.0.0.1:$FULCRUM_A --admin 127.0.0.1:$FULCRUM_A_ADMIN 2>/dev/null &
FULCRUM_A_PID=$!; PIDS+=($!)

{ haproxy_head; cat <<EOF; } >"$WORK/haproxy-tls.cfg"
frontend a
  bind 127.0.0.1:$HAPROXY_A
  default_backend to_b
backend to_b
  server b 127.0.0.1:$HAPROXY_B ssl alpn h2 crt $WORK/certs/a-bundle.pem ca-file $WORK/certs/ca.pem verify required verifyhost proxy.fulcrum.internal sni str(proxy.fulcrum.internal)
frontend b
  bind 127.0.0.1:$HAPROXY_B ssl crt $WORK/certs/b-bundle.pem ca-file $WORK/certs/ca.pem verify required alpn h2
  default_backend backend
backend backend
  server s1 127.0.0.1:$BACKEND
EOF
haproxy -f "$WORK/haproxy-tls.cfg" -db & HAPROXY_TLS_PID=$!; PIDS+=($!)

mkdir -p "$WORK/nginx-tls"
cat >"$WORK/nginx-tls/nginx.conf" <<EOF
worker_processes auto;
daemon off;
error_log stderr error;
pid $WORK/nginx-tls/pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream to_b { server 127.0.0.1:$NGINX_B; keepalive 64; keepalive_requests 1000000; }
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_A;
    location / {
      proxy_pass https://to_b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $WORK/certs/proxy-a.pem;
      proxy_ssl_certificate_key $WORK/certs/proxy-a-key.pem;
      proxy_ssl_trusted_certificate $WORK/certs/ca.pem;
      proxy_ssl_verify on; proxy_ssl_name proxy.fulcrum.internal; proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_B ssl;
    ssl_certificate $WORK/certs/proxy-b.pem;
    ssl_certificate_key $WORK/certs/proxy-b-key.pem;
    ssl_client_certificate $WORK/certs/ca.pem;
    ssl_verify_client on;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -c "$WORK/nginx-tls/nginx.conf" -p "$WORK/nginx-tls" & NGINX_TLS_PID=$!; PIDS+=($!)
wait_port $FULCRUM_A; wait_port $HAPROXY_A; wait_port $NGINX_A
# The hop is ready once proxy a has the coordinator's weights and reaches b.
for _ in $(seq 1 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.local' "http://127.0.0.1:$FULCRUM_A/" || true)
  [ "$code" = 200 ] && break
  sleep 0.05
done
[ "$code" = 200 ] || { echo "fulcrum-proxy a -> b hop never answered 200 (last $code)" >&2; exit 1; }
sleep 0.5

echo "fulcrum-proxy benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${SECONDS_PER_RUN}s per run"
echo "wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'), $(haproxy -v | awk 'NR==1 {print $1, $3}'), $(nginx -v 2>&1 | awk '{print $3}')"

PLAIN=(direct fulcrum-proxy haproxy nginx)
HOP=("fulcrum-proxy (h2, mTLS)" "haproxy (h2, mTLS)" "nginx (http/1.1, mTLS)")
SINGLE=(direct-1 fulcrum-proxy-1 haproxy-1 nginx-1)
single=$((SECONDS_PER_RUN / 2 > 3 ? SECONDS_PER_RUN / 2 : 3))
# The proxies run in turn, each round starting one further along (a proxy that always ran
# right after the direct run, or always last, would meet the same noise every round).
plain() {
  case $1 in
    0) run fulcrum-proxy $FULCRUM $CONNECTIONS "$SECONDS_PER_RUN" $FULCRUM_PID ;;
    1) run haproxy $HAPROXY $CONNECTIONS "$SECONDS_PER_RUN" $HAPROXY_PID ;;
    2) run nginx $NGINX $CONNECTIONS "$SECONDS_PER_RUN" $(family $NGINX_PID) ;;
  esac
}
hop() {
  case $1 in
    0) run "${HOP[0]}" $FULCRUM_A $CONNECTIONS "$SECONDS_PER_RUN" $FULCRUM_A_PID $FULCRUM_B_PID ;;
    1) run "${HOP[1]}" $HAPROXY_A $CONNECTIONS "$SECONDS_PER_RUN" $HAPROXY_TLS_PID ;;
    2) run "${HOP[2]}" $NGINX_A $CONNECTIONS "$SECONDS_PER_RUN" $(family $NGINX_TLS_PID) ;;
  esac
}
one() {
  case $1 in
    0) run fulcrum-proxy-1 $FULCRUM 1 $single $FULCRUM_PID ;;
    1) run haproxy-1 $HAPROXY 1 $single $HAPROXY_PID ;;
    2) run nginx-1 $NGINX 1 $single $(family $NGINX_PID) ;;
  esac
}
for round in $(seq 1 "$ROUNDS"); do
  of=""; [ "$ROUNDS" -gt 1 ] && of=" (round $round of $ROUNDS)"
  header "Plaintext HTTP/1.1 keep-alive, $CONNECTIONS connections$of"
  run direct $BACKEND $CONNECTIONS "$SECONDS_PER_RUN"
  for turn in 0 1 2; do plain $(((round - 1 + turn) % 3)); done

  header "Proxy-to-proxy mTLS hop (both proxies' CPU), $CONNECTIONS connections$of"
  for turn in 0 1 2; do hop $(((round - 1 + turn) % 3)); done

  header "One connection (latency added = proxy p50 - direct p50)$of"
  run direct-1 $BACKEND 1 $single
  for turn in 0 1 2; do one $(((round - 1 + turn) % 3)); done
  direct=$(cat "$WORK/p50-direct-1")
  for name in fulcrum-proxy-1 haproxy-1 nginx-1; do
    awk -v n="$name" -v p="$(cat "$WORK/p50-$name")" -v d="$direct" 'BEGIN {printf "  %-18s +%.0f us p50\n", n, p - d}'
  done
done

if [ "$ROUNDS" -gt 1 ]; then
  echo
  echo "Medians of $ROUNDS rounds"
  printf "%-34s %9s %10s %10s %12s\n" "" "req/s" "p50 us" "p99 us" "CPU us/req"
  medians "${PLAIN[@]}" "${HOP[@]}" "${SINGLE[@]}"
  direct=$(median direct-1 2)
  for name in fulcrum-proxy-1 haproxy-1 nginx-1; do
    awk -v n="$name" -v p="$(median "$name" 2)" -v d="$direct" 'BEGIN {printf "  %-18s +%.0f us p50\n", n, p - d}'
  done
fi

echo
echo "$IDLE_CONNECTIONS connections open and idle, then one request on each"
printf "%-34s %9s %9s %9s %9s\n" "" "RSS MB" "KB each" "after one" "answered"
idle_memory fulcrum-proxy $FULCRUM $FULCRUM_PID
idle_memory haproxy $HAPROXY $HAPROXY_PID
idle_memory nginx $NGINX $(family $NGINX_PID)
