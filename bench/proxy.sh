#!/usr/bin/env bash
# bench/proxy.sh — load benchmark: Portcullis vs nginx as a reverse proxy.
#
# What it does (everything on 127.0.0.1, every port picked free at run time):
#   1. installs wrk and nginx with apt-get if they are missing (Debian, root);
#   2. starts a private nginx as a fast upstream (fixed 200 "hello" body);
#   3. starts a second private nginx as a reverse proxy in front of it
#      (upstream keepalive 64, HTTP/1.1 to the upstream, access_log off — with
#      ACCESS_LOG=1 `access_log FILE combined buffer=64k flush=1s`,
#      worker_processes = number of cores);
#   4. starts Portcullis in front of the same upstream (builds it with
#      `cargo build --release` if the default binary is missing) at
#      `--log-level warn` (access log off) — with ACCESS_LOG=1 at the default
#      level with `server.access_log = { path = FILE }`, as users run it;
#   5. runs wrk against [direct, nginx, portcullis], interleaved, ROUNDS times
#      (even rounds in reverse order; use an even ROUNDS to balance position),
#      and prints per target the median req/s, p50 and p99 latency (ms), the
#      proxies' CPU per request (user+sys from /proc: Portcullis, and nginx's master + workers) and
#      the ratios portcullis/nginx for req/s and p99.
# Both nginx instances run from a temp dir with their own conf/pid/logs; the
# system nginx is never touched. Every process started is stopped on exit.
# Raw wrk outputs, generated configs and server logs go to bench/out/<stamp>/.
#
# Usage (from anywhere; paths are relative to the repo root):
#   bash bench/proxy.sh
#   DURATION=3s ROUNDS=1 bash bench/proxy.sh          # quick smoke run
#   SKIP_PORTCULLIS=1 bash bench/proxy.sh             # direct + nginx only
#
# Env knobs:
#   DURATION        wrk duration per measurement (wrk syntax: 10s, 1m)  [10s]
#   ROUNDS          rounds of [direct, nginx, portcullis]               [3]
#   CONNECTIONS     wrk connections (-c)                                [64]
#   THREADS         wrk threads (-t)                                    [2]
#   WARMUP          warm-up run per target before the rounds, 0 = none  [2s]
#   PORTCULLIS_BIN  gateway binary        [target/release/portcullis]
#                   (built only when this default path is missing)
#   SKIP_PORTCULLIS 1 = benchmark only the upstream and nginx           [0]
#   RESILIENCE      1 = also run a second Portcullis ("resilient") with circuit
#                   breakers, HTTP health checks and outlier detection on the
#                   same healthy upstream, and print resilient/portcullis [0]
#   ACCESS_LOG      1 = both proxies write their access log to a file (nginx
#                   buffered, Portcullis' default writer), the line count of
#                   each file is checked against the requests made        [0]
#   BASELINE_BIN    another build of the gateway (e.g. the previous commit's
#                   release binary): run it as "baseline" with the same plain
#                   config and print portcullis/baseline, a same-run ratio  []
#
# Note: on a 2-core machine wrk, the upstream and the proxy share the cores, so
# absolute numbers are low; compare the ratios, which is what this is for.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
SKIP_PORTCULLIS=${SKIP_PORTCULLIS:-0}
RESILIENCE=${RESILIENCE:-0}
ACCESS_LOG=${ACCESS_LOG:-0}
DEFAULT_BIN=target/release/portcullis
BIN=${PORTCULLIS_BIN:-$DEFAULT_BIN}

BENCH_NAME=proxy.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- argument checks -------------------------------------------------------
[[ $ACCESS_LOG == 0 || $ACCESS_LOG == 1 ]] || die "ACCESS_LOG must be 0 or 1 (got '$ACCESS_LOG')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
(( THREADS <= CONNECTIONS )) || die "THREADS must be <= CONNECTIONS"

DUR_S=$(to_seconds "$DURATION")
(( DUR_S > 0 )) || die "DURATION must be > 0"
if [[ $WARMUP == 0 ]]; then WARM_S=0; else WARM_S=$(to_seconds "$WARMUP"); fi

# --- dependencies ----------------------------------------------------------
need_apt wrk nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for t in python3 curl timeout; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' is required"
done

if [[ $SKIP_PORTCULLIS != 1 ]]; then
  if [[ ! -x $BIN ]]; then
    if [[ $BIN == "$DEFAULT_BIN" ]]; then
      log "building Portcullis (cargo build --release)"
      cargo build --release
    fi
    [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found/executable"
  fi
fi

CORES=$(nproc)

# --- work dirs, cleanup ----------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/out/$STAMP"
mkdir -p "$OUT"
# Logs and generated configs are copied next to the raw outputs at exit (bench/lib.sh).
bench_tmp portcullis-bench

# --- free ports --------------------------------------------------------------
read -r UP_PORT NGX_PORT PC_PORT RS_PORT BL_PORT < <(free_ports 5)
[[ -n ${PC_PORT:-} ]] || die "could not pick free ports"

# --- helpers -----------------------------------------------------------------
# start_nginx NAME CONF: run nginx in the foreground (daemon off) in background
start_nginx() {
  local name=$1 conf=$2
  "$NGINX" -p "$TMP/" -e "$TMP/$name-error.log" -c "$conf" -g 'daemon off;' \
    >"$TMP/$name.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}

# --- upstream nginx ------------------------------------------------------------
cat >"$TMP/upstream-nginx.conf" <<EOF
worker_processes $CORES;
pid $TMP/upstream-nginx.pid;
error_log $TMP/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths up)
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type text/plain;
            return 200 "hello from upstream\n";
        }
    }
}
EOF

# --- proxy nginx -----------------------------------------------------------------
# ACCESS_LOG=1: each proxy writes an access log to a file, nginx with its usual buffer.
if [[ $ACCESS_LOG == 1 ]]; then
  NGX_ACCESS="access_log $TMP/nginx-access.log combined buffer=64k flush=1s;"
  PC_ACCESS="access_log = { path = \"$TMP/portcullis-access.log\" }"
  PC_LEVEL=info
  LOG_NOTE="access logs on: nginx buffer=64k flush=1s, Portcullis server.access_log at --log-level info"
else
  NGX_ACCESS="access_log off;"
  PC_ACCESS=""
  PC_LEVEL=warn
  LOG_NOTE="access logs off"
fi
cat >"$TMP/proxy-nginx.conf" <<EOF
worker_processes $CORES;
pid $TMP/proxy-nginx.pid;
error_log $TMP/proxy-error.log warn;
events { worker_connections 4096; }
http {
    $NGX_ACCESS
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths px)
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

# --- portcullis config -----------------------------------------------------------
cat >"$TMP/portcullis.toml" <<EOF
[server]
listen = "127.0.0.1:$PC_PORT"
$PC_ACCESS

[[upstreams]]
name = "up"
balance = "round_robin"
targets = [ { address = "127.0.0.1:$UP_PORT" } ]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
EOF

# The same, with every passive and active protection on (and nothing failing).
sed -e "s/127.0.0.1:$PC_PORT/127.0.0.1:$RS_PORT/" -e "s/portcullis-access.log/resilient-access.log/" \
  "$TMP/portcullis.toml" >"$TMP/portcullis-resilient.toml"
cat >>"$TMP/portcullis-resilient.toml" <<EOF

[upstreams.circuit_breaker]
consecutive_failures = 5
error_ratio = 0.5

[upstreams.health_check]
path = "/"
interval = "1s"

[upstreams.outlier_detection]
consecutive_5xx = 5
EOF

# --- start servers -----------------------------------------------------------------
"$NGINX" -t -q -p "$TMP/" -e "$TMP/nginx-test.log" -c "$TMP/upstream-nginx.conf" \
  || die "upstream nginx config invalid"
"$NGINX" -t -q -p "$TMP/" -e "$TMP/nginx-test.log" -c "$TMP/proxy-nginx.conf" \
  || die "proxy nginx config invalid"

start_nginx upstream "$TMP/upstream-nginx.conf"
wait_port "$UP_PORT" "$LAST_PID" "$TMP/upstream-error.log" "upstream nginx"
log "upstream nginx on 127.0.0.1:$UP_PORT (worker_processes $CORES)"

start_nginx proxy "$TMP/proxy-nginx.conf"
wait_port "$NGX_PORT" "$LAST_PID" "$TMP/proxy-error.log" "nginx proxy"
log "nginx proxy on 127.0.0.1:$NGX_PORT (worker_processes $CORES = number of cores, upstream keepalive 64, $LOG_NOTE)"
NGX_PID=$LAST_PID

TARGETS=(direct nginx)
declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/"
  [nginx]="http://127.0.0.1:$NGX_PORT/"
)
# start_portcullis TARGET CONFIG PORT DESCRIPTION [BINARY]
declare -A PID
# The nginx proxy's CPU is its master's and its workers' (found when measured).
PID[nginx]=$NGX_PID
start_portcullis() {
  local t=$1 conf=$2 port=$3 bin=${5:-$BIN}
  "$bin" run --config "$conf" --log-level "$PC_LEVEL" >"$TMP/$t.log" 2>&1 &
  PIDS+=("$!")
  PID[$t]=$!
  wait_port "$port" "$!" "$TMP/$t.log" "$t"
  log "$t: $4 on 127.0.0.1:$port"
  TARGETS+=("$t")
  URL[$t]="http://127.0.0.1:$port/"
}
if [[ $SKIP_PORTCULLIS != 1 ]]; then
  start_portcullis portcullis "$TMP/portcullis.toml" "$PC_PORT" "$BIN"
  if [[ $RESILIENCE == 1 ]]; then
    start_portcullis resilient "$TMP/portcullis-resilient.toml" "$RS_PORT" \
      "$BIN with breakers, health checks and outlier detection"
  fi
  if [[ -n ${BASELINE_BIN:-} ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN '$BASELINE_BIN' not found/executable"
    sed -e "s/127.0.0.1:$PC_PORT/127.0.0.1:$BL_PORT/" -e "s/portcullis-access.log/baseline-access.log/" \
      "$TMP/portcullis.toml" >"$TMP/portcullis-baseline.toml"
    start_portcullis baseline "$TMP/portcullis-baseline.toml" "$BL_PORT" "$BASELINE_BIN" "$BASELINE_BIN"
  fi
fi

for t in "${TARGETS[@]}"; do check_200 "$t" "${URL[$t]}"; done

# --- wrk runs ------------------------------------------------------------------
total_s=$(( (ROUNDS * DUR_S + WARM_S) * ${#TARGETS[@]} ))
log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; $ROUNDS round(s) of [${TARGETS[*]}], ~${total_s}s of load"

wrk_rounds "$CONNECTIONS" ""

# --- summary -------------------------------------------------------------------
summary="$OUT/summary.txt"
{
  echo "Portcullis proxy benchmark $STAMP"
  echo "machine: $CORES cores; nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), worker_processes $CORES (upstream and proxy)"
  echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS round(s), medians over rounds"
  echo "$LOG_NOTE"
  echo
  wrk_table ""
  if [[ $SKIP_PORTCULLIS != 1 ]]; then
    echo
    echo "portcullis/nginx  req/s ratio: $(ratio "${MED_RPS[portcullis]}" "${MED_RPS[nginx]}")   (higher is better)"
    echo "portcullis/nginx  p99 ratio:   $(ratio "${MED_P99[portcullis]}" "${MED_P99[nginx]}")   (lower is better)"
    echo "portcullis/nginx  CPU per request: $(ratio "${MED_CPU[portcullis]}" "${MED_CPU[nginx]}")   (user+sys of the proxy processes; lower is better)"
  fi
  if [[ $RESILIENCE == 1 && $SKIP_PORTCULLIS != 1 ]]; then
    echo "resilient/portcullis req/s ratio: $(ratio "${MED_RPS[resilient]}" "${MED_RPS[portcullis]}")   (breakers + health checks + outlier detection; goal >= 0.97)"
  fi
  if [[ -n ${BASELINE_BIN:-} && $SKIP_PORTCULLIS != 1 ]]; then
    echo "portcullis/baseline req/s ratio: $(ratio "${MED_RPS[portcullis]}" "${MED_RPS[baseline]}")   (same run; >= 1 means no loss)"
    echo "portcullis/baseline p99 ratio:   $(ratio "${MED_P99[portcullis]}" "${MED_P99[baseline]}")   (lower is better)"
    echo "portcullis/baseline CPU per request: $(ratio "${MED_CPU[portcullis]}" "${MED_CPU[baseline]}")   (process user+sys per request; lower is better)"
  fi
  for t in "${TARGETS[@]}"; do
    (( ${ERRS[$t]} == 0 )) || echo "WARNING: $t had ${ERRS[$t]} socket errors / non-2xx responses"
  done
  if [[ $ACCESS_LOG == 1 ]]; then
    # Every request is a line: wrk's count (it misses the few in flight when it stops)
    # plus the check request, against the lines in each file once both have flushed
    # (nginx within flush=1s, Portcullis within 100 ms).
    sleep 1.5
    for t in "${TARGETS[@]}"; do
      case $t in direct) continue ;; nginx) f=$TMP/nginx-access.log ;; portcullis) f=$TMP/portcullis-access.log ;; *) f=$TMP/$t-access.log ;; esac
      made=$(( $(cat "$OUT"/*-"$t".txt | awk '/requests in / { n += $1 } END { print n + 0 }') + 1 ))
      lines=$(wc -l <"$f" 2>/dev/null || echo 0)
      printf 'access log %-10s %10d lines for %10d requests counted by wrk\n' "$t" "$lines" "$made"
      (( lines >= made )) || echo "WARNING: $t's access log is missing $(( made - lines )) lines"
    done
  fi
} | tee "$summary"
echo
log "raw wrk outputs, configs and logs: ${OUT#"$ROOT"/}/"
