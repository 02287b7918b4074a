# Sourced by the proxy's bench scripts.

# ensure_tools TOOL...: installs the ones missing, from Debian (nginx as nginx-light).
ensure_tools() {
  local missing=() packages=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]} (Debian packages)..." >&2
  for tool in "${missing[@]}"; do
    case "$tool" in nginx) packages+=(nginx-light) ;; *) packages+=("$tool") ;; esac
  done
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2
}

# work_dir NAME: a temporary directory in WORK, and PIDS, the processes to stop; both
# removed and stopped when the script exits.
work_dir() {
  WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# wait_port PORT: until something listens on 127.0.0.1:PORT, at most 10 s.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  exit 1
}

# backend_conf DIR PORT: the nginx configuration of the fixed backend (one worker, its
# pid file in DIR, keep-alive, a 3-byte answer) on 127.0.0.1:PORT.
backend_conf() {
  cat <<CONF
worker_processes 1;
daemon off;
error_log stderr error;
pid $1/pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "ok\n"; } }
}
CONF
}

# bench_entry PORT LOCALITY CLUSTER: the ServiceEntry of bench.local, its one endpoint the
# backend on 127.0.0.1:PORT, in LOCALITY and CLUSTER.
bench_entry() {
  cat <<CONF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench, namespace: bench}
spec:
  hosts: [bench.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: $1}, locality: $2, labels: {topology.istio.io/cluster: $3}}
CONF
}

# haproxy_head [THREADS]: the global and defaults sections the benches' haproxy
# configurations share (HTTP mode, connections to the backend reused); THREADS threads,
# else haproxy's default (one per CPU).
haproxy_head() {
  echo "global"
  [ -n "${1:-}" ] && echo "  nbthread $1"
  cat <<CONF
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
CONF
}

# haproxy_plain PORT BACKEND [THREADS]: haproxy's configuration for plaintext HTTP on
# 127.0.0.1:PORT to the backend on 127.0.0.1:BACKEND.
haproxy_plain() {
  haproxy_head "${3:-}"
  cat <<CONF
frontend plain
  bind 127.0.0.1:$1
  default_backend backend
backend backend
  server s1 127.0.0.1:$2
CONF
}
