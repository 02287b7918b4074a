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

# wait_port PORT: until something listens on 127.0.0.1:PORT, at most 10 s.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  exit 1
}
