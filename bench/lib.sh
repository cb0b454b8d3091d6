# bench/lib.sh — what the benchmark scripts share. Not run by itself: a script sets
# BENCH_NAME (its name in messages) and sources it:
#
#   BENCH_NAME=sse.sh; source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets ROOT (the repository) and changes to it, and gives:
#   die MSG / log MSG        an error (exit $BENCH_DIE_STATUS, default 1) / a progress line
#   need_apt CMD[:PKG] ...   installs the Debian packages of the missing commands (root)
#   free_ports N             N free 127.0.0.1 ports, space-separated
#   wait_port PORT [PID [LOG [NAME]]]
#                            waits (~10 s) until PORT accepts; fails early, showing LOG,
#                            when PID exits first
#   bench_tmp PREFIX         makes TMP, a fresh /tmp dir nginx workers can read
# and, at exit, stops what the script put in the PIDS array (TERM, then KILL after ~5 s),
# runs the script's `bench_cleanup_hook` if it has one, copies TMP's configs and logs to
# OUT when OUT is set, and removes TMP.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PIDS=()

die() { echo "${BENCH_NAME:-bench}: error: $*" >&2; exit "${BENCH_DIE_STATUS:-1}"; }
log() { echo "==> $*"; }

need_apt() {
  local want=() c
  for c in "$@"; do
    local cmd=${c%%:*} pkg=${c#*:}
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || want+=("$pkg")
  done
  (( ${#want[@]} )) || return 0
  log "installing ${want[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
}

# The sockets are closed before the ports are printed: a caller that reads the line
# (`read -r A B < <(free_ports 2)`) goes on at once, and must find them free.
free_ports() {
  python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
ports = [x.getsockname()[1] for x in s]
for x in s: x.close()
print(" ".join(map(str, ports)), flush=True)' "$1"
}

wait_port() {
  local port=$1 pid=${2:-} logf=${3:-} name=${4:-process ${2:-}} i
  for ((i = 0; i < 100; i++)); do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      [[ -n $logf ]] && { echo "--- $logf ---" >&2; tail -n 30 "$logf" >&2 || true; }
      die "$name exited before accepting connections on 127.0.0.1:$port"
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  [[ -n $logf ]] && { echo "--- $logf ---" >&2; tail -n 30 "$logf" >&2 || true; }
  die "nothing accepts connections on 127.0.0.1:$port after 10 s${OUT:+ (logs in $OUT)}"
}

bench_cleanup() {
  local rc=$? p i
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook || true; fi
  if [[ -n ${TMP:-} ]]; then
    [[ -n ${OUT:-} ]] && cp "$TMP"/*.conf "$TMP"/*.toml "$TMP"/*.log "$OUT"/ 2>/dev/null || true
    rm -rf "$TMP"
  fi
  exit "$rc"
}

trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_tmp() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$TMP"   # nginx workers may run as 'nobody'
}

# build_sse_bench BIN BENCH: builds the gateway and the `sse-bench` example for $PROFILE
# (release or the dev build) when either is missing.
build_sse_bench() {
  [[ -x $1 && -x $2 ]] && return 0
  if [[ $PROFILE == release ]]; then
    log "building (cargo build --release --bin portcullis --example sse-bench)"
    cargo build --release --bin portcullis --example sse-bench
  else
    log "building (cargo build --bin portcullis --example sse-bench)"
    cargo build --bin portcullis --example sse-bench
  fi
}

# upstream_nginx PORT LOCATION: starts a private nginx (one worker, no access log,
# keep-alive without limit) on 127.0.0.1:PORT whose `location /` block is LOCATION;
# config and logs in $TMP (bench_tmp first), nginx binary $NGINX.
upstream_nginx() {
  cat >"$TMP/upstream.conf" <<CONF
worker_processes 1;
pid $TMP/upstream.pid;
error_log $TMP/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/b; proxy_temp_path $TMP/p; fastcgi_temp_path $TMP/f;
    uwsgi_temp_path $TMP/u; scgi_temp_path $TMP/s;
    server {
        listen 127.0.0.1:$1;
        location / { $2 }
    }
}
CONF
  "$NGINX" -p "$TMP/" -c "$TMP/upstream.conf" -g 'daemon off;' >"$TMP/upstream.log" 2>&1 &
  PIDS+=("$!")
}

# private_redis PORT: a redis-server on 127.0.0.1:PORT that persists nothing (dir $TMP).
private_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
    >"$TMP/redis.log" 2>&1 &
  PIDS+=("$!")
}
