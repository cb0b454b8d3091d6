#!/usr/bin/env bash
# bench/callgrind.sh — instructions per request: Portcullis and nginx as the proxy,
# each under callgrind, one worker, keep-alive clients each sending one request at a time.
#
# Wall-clock benchmarks on a shared 2-core VM spread by ±6% from run to run; callgrind
# counts instructions, which repeat to a few per request for the same binary and input.
# So this is the measure for a step too small for bench/proxy.sh to see.
#
# What it does (everything on 127.0.0.1, every port picked free at run time):
#   1. starts a private nginx upstream (fixed 200 "hello from upstream" body);
#   2. for each proxy — nginx (`worker_processes 1; master_process off`, upstream
#      keepalive), Portcullis (`workers = 1`) and, with BASELINE_BIN, a second build —
#      runs it under `valgrind --tool=callgrind` twice: once for FEW requests and once for
#      FEW + MANY, and prints (Ir of the second − Ir of the first) / MANY: start-up, the
#      first connections and shutdown cancel out;
#   3. keeps the callgrind outputs in bench/out/<stamp>/ (`callgrind_annotate FILE`).
#
# Usage:
#   bash bench/callgrind.sh
#   ACCESS_LOG=1 bash bench/callgrind.sh               # both proxies log each request
#   BASELINE_BIN=/path/to/old/portcullis bash bench/callgrind.sh
#   POST=1 bash bench/callgrind.sh                     # a 1 KB JSON POST instead of a GET
#   CONNS=32 bash bench/callgrind.sh                   # 32 connections at once, as under load
#
# Env knobs:
#   PORTCULLIS_BIN  gateway binary [target/profiling/portcullis, built with
#                   `cargo build --profile profiling` when that default is missing]
#   BASELINE_BIN    another build, measured the same way, printed as a ratio  []
#   FEW / MANY      request counts of the two runs                  [200 / 1000]
#   ACCESS_LOG      1 = nginx `access_log FILE combined buffer=64k flush=1s`,
#                   Portcullis `server.access_log` to a file at --log-level info [0]
#   POST            1 = POST a 1 KB JSON body                                   [0]
#   CONNS           client connections at once, each sending its share of the
#                   requests one at a time; with more than one, one wake-up of a
#                   worker serves several requests, as under load            [1]
#   SKIP_NGINX      1 = measure only the Portcullis build(s)                     [0]
#   CALLGRIND_ARGS  more valgrind options, e.g. `--dump-instr=yes` (then
#                   `addr2line -i -f -e BIN ADDR` names the inlined frames of a cost) []
set -euo pipefail

FEW=${FEW:-200}
MANY=${MANY:-1000}
ACCESS_LOG=${ACCESS_LOG:-0}
POST=${POST:-0}
CONNS=${CONNS:-1}
SKIP_NGINX=${SKIP_NGINX:-0}
DEFAULT_BIN=target/profiling/portcullis
BIN=${PORTCULLIS_BIN:-$DEFAULT_BIN}

BENCH_NAME=callgrind.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $FEW =~ ^[1-9][0-9]*$ ]] || die "FEW must be a positive integer (got '$FEW')"
[[ $MANY =~ ^[1-9][0-9]*$ ]] || die "MANY must be a positive integer (got '$MANY')"
[[ $ACCESS_LOG == 0 || $ACCESS_LOG == 1 ]] || die "ACCESS_LOG must be 0 or 1 (got '$ACCESS_LOG')"
[[ $POST == 0 || $POST == 1 ]] || die "POST must be 0 or 1 (got '$POST')"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
# Both runs open every connection, so that its set-up and close cancel out.
(( CONNS <= FEW )) || die "CONNS ($CONNS) must not exceed FEW ($FEW)"

need_apt nginx valgrind
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "'python3' is required"
if [[ ! -x $BIN ]]; then
  if [[ $BIN == "$DEFAULT_BIN" ]]; then
    log "building Portcullis (cargo build --profile profiling)"
    cargo build --profile profiling --bin portcullis
  fi
  [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found/executable"
fi
if [[ -n ${BASELINE_BIN:-} ]]; then
  [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN '$BASELINE_BIN' not found/executable"
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/out/callgrind-$STAMP"
mkdir -p "$OUT"
bench_tmp portcullis-callgrind
read -r UP_PORT PX_PORT < <(free_ports 2)
[[ -n ${PX_PORT:-} ]] || die "could not pick free ports"

# --- upstream ----------------------------------------------------------------
upstream_nginx "$UP_PORT" 'default_type text/plain; return 200 "hello from upstream\n";'
wait_port "$UP_PORT" "${PIDS[-1]}" "$TMP/upstream-error.log" "upstream nginx"

# --- the proxies' configs ----------------------------------------------------------
if [[ $ACCESS_LOG == 1 ]]; then
  NGX_ACCESS="access_log $TMP/nginx-access.log combined buffer=64k flush=1s;"
  PC_ACCESS="access_log = { path = \"$TMP/portcullis-access.log\" }"
  PC_LEVEL=info
else
  NGX_ACCESS="access_log off;"
  PC_ACCESS=""
  PC_LEVEL=warn
fi
cat >"$TMP/proxy-nginx.conf" <<EOF
worker_processes 1;
master_process off;
pid $TMP/proxy-nginx.pid;
error_log $TMP/proxy-error.log warn;
events { worker_connections 1024; }
http {
    $NGX_ACCESS
    keepalive_requests 1000000;
$(nginx_temp_paths px)
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PX_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cat >"$TMP/portcullis.toml" <<EOF
[server]
listen = "127.0.0.1:$PX_PORT"
workers = 1
$PC_ACCESS

[[upstreams]]
name = "up"
targets = [ { address = "127.0.0.1:$UP_PORT" } ]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
EOF

# --- the client: N requests, one at a time, on one keep-alive connection -------------
cat >"$TMP/client.py" <<'EOF'
import socket, sys, threading
port, n, post = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if post:
    body = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 960 + b'"}]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
else:
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind-bench\r\nAccept: */*\r\n\r\n"
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 1
failed = []

def run(count):
    try:
        one(count)
    except BaseException as e:  # reported by the main thread
        failed.append(repr(e))

def one(count):
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    for _ in range(count):
        s.sendall(req)
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before a response head")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit("status " + status.decode())
        length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")[1:]
                      if l.lower().startswith(b"content-length:"))
        while len(buf) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed in a response body")
            buf += chunk
        buf = buf[length:]
    s.close()

# CONNS connections at once, each sending its share one request at a time.
threads = [threading.Thread(target=run, args=(n // conns + (i < n % conns),)) for i in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failed:
    sys.exit(failed[0])
EOF

# run_one NAME COUNT CMD...: the proxy under callgrind, COUNT requests, total Ir printed.
run_one() {
  local name=$1 count=$2 pid
  shift 2
  local out="$OUT/$name-$count.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" ${CALLGRIND_ARGS:-} "$@" >"$TMP/$name-$count.log" 2>&1 &
  pid=$!
  # A process under valgrind starts slowly: up to a minute.
  WAIT_TRIES=600 wait_port "$PX_PORT" "$pid" "$TMP/$name-$count.log" "$name under callgrind"
  python3 "$TMP/client.py" "$PX_PORT" "$count" "$POST" "$CONNS" || die "$name: the client failed"
  kill -TERM "$pid"
  wait "$pid" || true
  [[ -s $out ]] || die "$name: callgrind wrote no output (log: $TMP/$name-$count.log)"
  # The (only) `totals:` / `summary:` line is the whole run's Ir.
  awk '/^(totals|summary):/ { print $2; exit }' "$out"
}

# per_request NAME CMD...: (Ir(FEW + MANY) − Ir(FEW)) / MANY
declare -A IR
per_request() {
  local name=$1 a b
  shift
  a=$(run_one "$name" "$FEW" "$@")
  b=$(run_one "$name" "$((FEW + MANY))" "$@")
  IR[$name]=$(( (b - a) / MANY ))
  printf '%-12s %8d instructions per request   (%d for %d, %d for %d)\n' \
    "$name" "${IR[$name]}" "$a" "$FEW" "$b" "$((FEW + MANY))"
}

what=GET
[[ $POST == 1 ]] && what="POST of a 1 KB JSON body"
log "callgrind, one worker, $what, one at a time on each of $CONNS connection(s); access log $([[ $ACCESS_LOG == 1 ]] && echo on || echo off)"
{
  echo "Portcullis callgrind benchmark $STAMP: $what on $CONNS connection(s), access log $([[ $ACCESS_LOG == 1 ]] && echo on || echo off)"
  if [[ $SKIP_NGINX != 1 ]]; then
    per_request nginx "$NGINX" -p "$TMP/" -e "$TMP/proxy-error.log" -c "$TMP/proxy-nginx.conf" -g 'daemon off;'
  fi
  per_request portcullis "$BIN" run --config "$TMP/portcullis.toml" --log-level "$PC_LEVEL"
  if [[ -n ${BASELINE_BIN:-} ]]; then
    per_request baseline "$BASELINE_BIN" run --config "$TMP/portcullis.toml" --log-level "$PC_LEVEL"
    echo "portcullis/baseline: $(ratio "${IR[portcullis]}" "${IR[baseline]}")"
  fi
  [[ $SKIP_NGINX == 1 ]] || echo "portcullis/nginx:    $(ratio "${IR[portcullis]}" "${IR[nginx]}")"
} | tee "$OUT/summary.txt"
log "callgrind outputs: ${OUT#"$ROOT"/}/ (per function: callgrind_annotate FILE)"
