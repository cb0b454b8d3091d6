#!/usr/bin/env bash
# bench/suite.sh — the benchmark suite (issue 19): one command, one run, one summary.
#
#   1. Load, wrk with keep-alive connections, interleaved rounds, medians: req/s, p50, p99
#      and CPU per request (user+sys of the proxy's processes from /proc: nginx's master and
#      workers, HAProxy's one process, Portcullis's one process) for
#        direct             the upstream (nginx returning a fixed 20-byte body)
#        nginx              nginx as reverse proxy (upstream keepalive 64, HTTP/1.1)
#        haproxy            HAProxy, http mode, keep-alive to the upstream (http-reuse always)
#        portcullis         Portcullis, one plain route
#        portcullis-apikey  the same with the api-key plugin (plugins/build.sh) on the route
#        nginx-tls          nginx terminating TLS (self-signed P-256 certificate, openssl)
#        portcullis-tls     Portcullis terminating TLS (the same certificate)
#      at CONNECTIONS (64) and again at HIGH_CONNECTIONS (1,000). wrk keeps its connections
#      open, so the TLS rows measure TLS record cost, not handshakes. Every request carries
#      `x-api-key` (the plugin's key) so every target sees the same bytes. At 1,000 TLS
#      connections a run starts with 1,000 handshakes (wrk connects anew each run): part
#      of a short run, the whole of a 1 s one on a busy 2-core box.
#   2. Idle keep-alive connections: for nginx and Portcullis each, a fresh proxy; N clients
#      (bench/idle_conns.py) each complete one request and stay open, idle; the proxy's RSS
#      (nginx: master + workers) before and after, in KB per connection, at N = 3,000 and
#      10,000. The proxies' keep-alive timeouts (600 s) outlast the measurement, and the
#      client checks afterwards that none of its connections was closed.
#   Then the ratios portcullis/nginx (and /haproxy, TLS against TLS, plugin against plain):
#   req/s, p99, CPU per request and KB per idle connection.
#
# Everything runs on 127.0.0.1 with ports picked at run time; the servers run from a temp
# dir with their own configs (logs off, one worker per core: nginx worker_processes,
# HAProxy nbthread, Portcullis's default workers) — the system's nginx and HAProxy are
# never touched. Every process started is stopped on exit. wrk outputs, configs, logs and
# summary.txt go to bench/out/suite-<stamp>/.
#
# Needs wrk, nginx, haproxy, openssl, curl and python3 — on Debian, as root, it installs
# the missing ones itself: apt-get install wrk nginx haproxy openssl curl python3.
# Needs an open-file limit of at least max(IDLE_CONNS) + HIGH_CONNECTIONS + 1024; it raises
# the soft limit to the hard one (as root, to 65536) and says so if that is not enough.
#
# Usage:
#   bash bench/suite.sh                                        # the full run (~9 min)
#   DURATION=2s ROUNDS=1 WARMUP=0 bash bench/suite.sh          # quick smoke run
#   SKIP_LOAD=1 bash bench/suite.sh                            # idle connections only
# Env knobs:
#   DURATION          wrk duration per measurement (10s, 1m)            [10s]
#   ROUNDS            interleaved rounds over the targets               [3]
#   WARMUP            wrk warm-up per target before each pass, 0 = none [2s]
#   THREADS           wrk threads                                       [2]
#   CONNECTIONS       connections of the first pass                     [64]
#   HIGH_CONNECTIONS  connections of the second pass                    [1000]
#   IDLE_CONNS        idle connection counts                            ["3000 10000"]
#   IDLE_SETTLE       seconds the connections stay idle before RSS is read [2]
#   PORTCULLIS_BIN    gateway binary [target/release/portcullis; built when that is missing]
#   ACCESS_LOG        1 = access logs on, as users run them: nginx's to a file with
#                     buffer=64k, Portcullis's default one (--log-level info) to a file
#                     (server.access_log); HAProxy's stay off. The logs stay in the
#                     temp dir (*.access, removed at exit; ~100 bytes a request)  [0]
#   PORTCULLIS_SERVER extra lines for every Portcullis [server] section, to try a
#                     setting: PORTCULLIS_SERVER='workers = 1'                 []
#   SKIP_LOAD, SKIP_HIGH, SKIP_IDLE, SKIP_HAPROXY, SKIP_PLUGIN, SKIP_TLS
#                     1 = leave that part or target out                 [0]
#
# On a 2-core machine wrk, the upstream and the proxy share the cores: absolute numbers
# are low and move with the machine's load; the same-run ratios are what this is for.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
HIGH_CONNECTIONS=${HIGH_CONNECTIONS:-1000}
IDLE_CONNS=${IDLE_CONNS:-3000 10000}
IDLE_SETTLE=${IDLE_SETTLE:-2}
IDLE_CONCURRENCY=64
ACCESS_LOG=${ACCESS_LOG:-0}
PORTCULLIS_SERVER=${PORTCULLIS_SERVER:-}
for v in SKIP_LOAD SKIP_HIGH SKIP_IDLE SKIP_HAPROXY SKIP_PLUGIN SKIP_TLS; do
  declare "$v=${!v:-0}"
done
DEFAULT_BIN=target/release/portcullis
BIN=${PORTCULLIS_BIN:-$DEFAULT_BIN}
API_KEY=bench-key

BENCH_NAME=suite.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- argument checks -----------------------------------------------------------------
for v in ROUNDS THREADS CONNECTIONS HIGH_CONNECTIONS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $IDLE_SETTLE =~ ^[0-9]+$ ]] || die "IDLE_SETTLE must be a number of seconds"
[[ $ACCESS_LOG == [01] ]] || die "ACCESS_LOG must be 0 or 1"
IDLE_MAX=0
for n in $IDLE_CONNS; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS must be positive integers (got '$n')"
  if (( n > IDLE_MAX )); then IDLE_MAX=$n; fi
done
DUR_S=$(to_seconds "$DURATION")
(( DUR_S > 0 )) || die "DURATION must be > 0"
[[ $WARMUP == 0 ]] || to_seconds "$WARMUP" >/dev/null

# --- dependencies --------------------------------------------------------------------
had_haproxy=$(command -v haproxy || true)
need_apt wrk nginx haproxy openssl curl python3
# A freshly installed Debian haproxy may have started its (listener-less) service.
[[ -n $had_haproxy ]] || service haproxy stop >/dev/null 2>&1 || true
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
command -v timeout >/dev/null || die "'timeout' (coreutils) is required"

if [[ ! -x $BIN ]]; then
  if [[ $BIN == "$DEFAULT_BIN" ]]; then
    log "building Portcullis (cargo build --release)"
    cargo build --release
  fi
  [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found/executable"
fi
if [[ $SKIP_LOAD != 1 && $SKIP_PLUGIN != 1 ]]; then
  log "building the api-key plugin (plugins/build.sh api-key)"
  bash plugins/build.sh api-key >/dev/null
fi
COMP="$ROOT/plugins/target/components"

# Descriptors: the idle client, wrk and each proxy hold one per connection (the proxies
# one more per upstream connection).
NEED_FDS=$(( IDLE_MAX + HIGH_CONNECTIONS + 1024 ))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
(( NOFILE >= NEED_FDS )) \
  || die "open-file limit $NOFILE is below $NEED_FDS (raise it: ulimit -Hn $NEED_FDS as root, or lower IDLE_CONNS)"
MAXCONN=$(( IDLE_MAX + HIGH_CONNECTIONS + 512 ))   # every server's connection cap
CORES=$(nproc)

# --- work dirs ------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/out/suite-$STAMP"
mkdir -p "$OUT"
bench_tmp portcullis-suite
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null \
  || die "openssl could not make the test certificate"

# --- server configs -----------------------------------------------------------------------
# nginx_conf NAME PORT LOCATION [ssl]: a private nginx (logs off, one worker per core,
# keep-alive far longer than the run) on 127.0.0.1:PORT whose `location /` is LOCATION.
nginx_conf() {
  local name=$1 port=$2 location=$3 ssl=${4:-}
  cat >"$TMP/$name.conf" <<EOF
worker_processes $CORES;
worker_rlimit_nofile $NOFILE;
pid $TMP/$name.pid;
error_log $TMP/$name-error.log warn;
events { worker_connections $MAXCONN; }
http {
    access_log $(if [[ $ACCESS_LOG == 1 && $name != upstream ]]; then echo "$TMP/$name.access combined buffer=64k"; else echo off; fi);
    keepalive_requests 1000000;
    keepalive_timeout 600s;
$(nginx_temp_paths "$name")
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port ${ssl:+ssl }backlog=4096;
        ${ssl:+ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;}
        location / { $location }
    }
}
EOF
  "$NGINX" -t -q -p "$TMP/" -e "$TMP/$name-test.log" -c "$TMP/$name.conf" || die "nginx config $name invalid"
}
PROXY_PASS='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'

# start_nginx NAME PORT: runs $TMP/NAME.conf in the foreground; LAST_PID is its master.
start_nginx() {
  "$NGINX" -p "$TMP/" -e "$TMP/$1-error.log" -c "$TMP/$1.conf" -g 'daemon off;' >"$TMP/$1.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
  wait_port "$2" "$LAST_PID" "$TMP/$1-error.log" "$1"
}

# portcullis_conf NAME PORT plain|apikey|tls. header_read_timeout as long as the keep-alive
# timeout: hyper's HTTP/1 header read timer also runs while a keep-alive connection waits
# for its next request, so the default 10 s would close the idle connections of part 2
# before keep_alive_timeout does (on 1,000s of them, the first opened are closed while the
# last are still being opened).
portcullis_conf() {
  local name=$1 port=$2 mode=$3 listen="\"127.0.0.1:$2\"" plugins='[]'
  [[ $mode != tls ]] || listen="[{ address = \"127.0.0.1:$port\", cert = \"$TMP/cert.pem\", key = \"$TMP/key.pem\" }]"
  [[ $mode != apikey ]] || plugins="[{ name = \"api-key\", config = { keys = [{ key = \"$API_KEY\", consumer = \"bench\" }] } }]"
  {
    printf '[server]\nlisten = %s\nkeep_alive_timeout = "600s"\nheader_read_timeout = "600s"\nmax_connections = %s\n' "$listen" "$MAXCONN"
    printf 'plugin_cache_dir = "%s"\n' "$TMP/wasm-cache"
    [[ $ACCESS_LOG != 1 ]] || printf 'access_log = { path = "%s" }\n' "$TMP/$name.access"
    printf '%s\n\n' "$PORTCULLIS_SERVER"
    printf '[[upstreams]]\nname = "up"\ntargets = [{ address = "127.0.0.1:%s" }]\n\n' "$UP_PORT"
    [[ $mode != apikey ]] || printf '[[plugins]]\nname = "api-key"\npath = "%s/api-key.wasm"\n\n' "$COMP"
    printf '[[routes]]\nname = "all"\npath_prefix = "/"\nupstream = "up"\nplugins = %s\n' "$plugins"
  } >"$TMP/$name.toml"
  "$BIN" validate "$TMP/$name.toml" >"$TMP/$name-validate.log" 2>&1 \
    || { cat "$TMP/$name-validate.log" >&2; die "Portcullis config $name invalid"; }
}

# start_portcullis NAME PORT: runs $TMP/NAME.toml (access log off: --log-level warn, unless
# ACCESS_LOG=1).
PC_LOG_LEVEL=warn
[[ $ACCESS_LOG != 1 ]] || PC_LOG_LEVEL=info
start_portcullis() {
  "$BIN" run --config "$TMP/$1.toml" --log-level "$PC_LOG_LEVEL" >"$TMP/$1.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
  wait_port "$2" "$LAST_PID" "$TMP/$1.log" "$1"
}

# start_haproxy NAME PORT: HAProxy in http mode, keep-alive both sides, no logs. It only
# serves the load part, so its cap is HIGH_CONNECTIONS + room (it wants two descriptors
# per connection of its cap, and refuses to start without them).
start_haproxy() {
  local maxconn=$(( HIGH_CONNECTIONS + 512 ))
  cat >"$TMP/$1.cfg" <<EOF
global
    nbthread $CORES
    maxconn $maxconn
defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $maxconn
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:$2
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
EOF
  "$HAPROXY" -c -q -f "$TMP/$1.cfg" || die "HAProxy config $1 invalid"
  "$HAPROXY" -db -f "$TMP/$1.cfg" >"$TMP/$1.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
  wait_port "$2" "$LAST_PID" "$TMP/$1.log" "$1"
  cp "$TMP/$1.cfg" "$OUT/" 2>/dev/null || true
}

# --- upstream ------------------------------------------------------------------------------
read -r UP_PORT < <(free_ports 1)
nginx_conf upstream "$UP_PORT" 'default_type text/plain; return 200 "hello from upstream\n";'
start_nginx upstream "$UP_PORT"
log "upstream nginx on 127.0.0.1:$UP_PORT (worker_processes $CORES)"

# --- 1. load -------------------------------------------------------------------------------
if [[ $SKIP_LOAD != 1 ]]; then
  read -r NGX_PORT HA_PORT PC_PORT PCK_PORT NGS_PORT PCS_PORT < <(free_ports 6)
  TARGETS=(direct)
  URL[direct]="http://127.0.0.1:$UP_PORT/"

  nginx_conf nginx "$NGX_PORT" "$PROXY_PASS"
  start_nginx nginx "$NGX_PORT"
  TARGETS+=(nginx); PID[nginx]=$LAST_PID; URL[nginx]="http://127.0.0.1:$NGX_PORT/"
  if [[ $SKIP_HAPROXY != 1 ]]; then
    start_haproxy haproxy "$HA_PORT"
    TARGETS+=(haproxy); PID[haproxy]=$LAST_PID; URL[haproxy]="http://127.0.0.1:$HA_PORT/"
  fi
  portcullis_conf portcullis "$PC_PORT" plain
  start_portcullis portcullis "$PC_PORT"
  TARGETS+=(portcullis); PID[portcullis]=$LAST_PID; URL[portcullis]="http://127.0.0.1:$PC_PORT/"
  if [[ $SKIP_PLUGIN != 1 ]]; then
    portcullis_conf portcullis-apikey "$PCK_PORT" apikey
    start_portcullis portcullis-apikey "$PCK_PORT"
    TARGETS+=(portcullis-apikey); PID[portcullis-apikey]=$LAST_PID
    URL[portcullis-apikey]="http://127.0.0.1:$PCK_PORT/"
    code=$(curl -sS -o /dev/null -w '%{http_code}' "${URL[portcullis-apikey]}")
    [[ $code == 401 ]] || die "portcullis-apikey answered $code without a key, expected 401"
  fi
  if [[ $SKIP_TLS != 1 ]]; then
    nginx_conf nginx-tls "$NGS_PORT" "$PROXY_PASS" ssl
    start_nginx nginx-tls "$NGS_PORT"
    TARGETS+=(nginx-tls); PID[nginx-tls]=$LAST_PID; URL[nginx-tls]="https://127.0.0.1:$NGS_PORT/"
    portcullis_conf portcullis-tls "$PCS_PORT" tls
    start_portcullis portcullis-tls "$PCS_PORT"
    TARGETS+=(portcullis-tls); PID[portcullis-tls]=$LAST_PID; URL[portcullis-tls]="https://127.0.0.1:$PCS_PORT/"
  fi
  for t in "${TARGETS[@]}"; do check_200 "$t" "${URL[$t]}"; done
  log "targets: ${TARGETS[*]}"

  WRK_ARGS=(-H "x-api-key: $API_KEY" --timeout 10s)
  PASSES=("$CONNECTIONS")
  [[ $SKIP_HIGH == 1 ]] || PASSES+=("$HIGH_CONNECTIONS")
  for c in "${PASSES[@]}"; do
    log "wrk -t$THREADS -c$c -d$DURATION: $ROUNDS round(s) of [${TARGETS[*]}]"
    wrk_rounds "$c" "c$c-"
  done
  # The load servers are done: the idle part runs beside nothing but the upstream.
  for t in "${TARGETS[@]}"; do
    if [[ -n ${PID[$t]:-} ]]; then stop_pid "${PID[$t]}"; fi
  done
  ACCESS_LINES=""
  if [[ $ACCESS_LOG == 1 ]]; then   # stopped, nginx has written its buffers out
    for t in "${TARGETS[@]}"; do
      [[ $t != direct && $t != haproxy ]] || continue
      [[ -s $TMP/$t.access ]] || die "ACCESS_LOG=1 but $t wrote no access log"
      ACCESS_LINES+="$t $(wc -l <"$TMP/$t.access"), "
    done
  fi
fi

# --- 2. idle keep-alive connections --------------------------------------------------------
declare -A IDLE_KB=() IDLE_RSS=()
# idle_run nginx|portcullis N: a fresh proxy, RSS before and after N idle connections.
idle_run() {
  local kind=$1 n=$2 name="idle-$1-$2" port pid before after word opened secs closed client r w
  read -r port < <(free_ports 1)
  if [[ $kind == nginx ]]; then
    nginx_conf "$name" "$port" "$PROXY_PASS"
    start_nginx "$name" "$port"
  else
    portcullis_conf "$name" "$port" plain
    start_portcullis "$name" "$port"
  fi
  pid=$LAST_PID
  check_200 "$name" "http://127.0.0.1:$port/"
  before=$(rss_kb "$pid")
  mkfifo "$TMP/$name.in" "$TMP/$name.out"
  python3 bench/idle_conns.py "$port" "$n" "$IDLE_CONCURRENCY" \
    <"$TMP/$name.in" >"$TMP/$name.out" 2>"$TMP/$name-client.log" &
  client=$!
  PIDS+=("$client")
  exec {w}>"$TMP/$name.in" {r}<"$TMP/$name.out"
  read -r -t 600 -u "$r" word opened secs \
    || { cat "$TMP/$name-client.log" >&2; die "$name: the idle client did not open its connections"; }
  [[ $word == open && $opened == "$n" ]] || die "$name: the idle client said '$word $opened'"
  sleep "$IDLE_SETTLE"   # the connections sit idle a moment before RSS is read
  after=$(rss_kb "$pid")
  echo check >&"$w"
  read -r -t 60 -u "$r" word closed || die "$name: the idle client did not report"
  exec {w}>&- {r}<&-
  stop_pid "$client"
  stop_pid "$pid"
  (( closed == 0 )) || die "$name: $closed of $n idle connections were closed during the measurement"
  IDLE_KB[$kind:$n]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
  IDLE_RSS[$kind:$n]="$before $after"
  printf '    %-10s %6d idle connections (opened in %ss): RSS %7.1f -> %7.1f MB, %6.2f KB per connection\n' \
    "$kind" "$n" "$secs" "$(awk -v k="$before" 'BEGIN { print k / 1024 }')" \
    "$(awk -v k="$after" 'BEGIN { print k / 1024 }')" "${IDLE_KB[$kind:$n]}"
}
if [[ $SKIP_IDLE != 1 ]]; then
  log "idle keep-alive connections: $IDLE_CONNS (each proxy fresh, $IDLE_SETTLE s idle before RSS is read)"
  for n in $IDLE_CONNS; do
    idle_run nginx "$n"
    idle_run portcullis "$n"
  done
fi

# --- summary -------------------------------------------------------------------------------
ratio_row() { # LABEL A B TAG
  printf '  %-30s %-7s req/s %6s   p99 %6s   cpu/req %6s\n' "$2/$3" "$1" \
    "$(ratio "${MED_RPS[$4$2]:-}" "${MED_RPS[$4$3]:-}")" "$(ratio "${MED_P99[$4$2]:-}" "${MED_P99[$4$3]:-}")" \
    "$(ratio "${MED_CPU[$4$2]:-}" "${MED_CPU[$4$3]:-}")"
}
mb_pair() { awk -v p="$1" 'BEGIN { split(p, a, " "); printf "%.1f -> %.1f", a[1] / 1024, a[2] / 1024 }'; }
has() { local t; for t in "${TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }
{
  echo "Portcullis benchmark suite $STAMP"
  echo "machine: $CORES cores, load average $LOAD_BEFORE at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  [[ -z $PORTCULLIS_SERVER ]] || echo "Portcullis [server] extra: $PORTCULLIS_SERVER"
  echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), HAProxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }'), $(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }'), $("$BIN" --version) ($BIN)"
  if [[ $SKIP_LOAD != 1 ]]; then
    echo "wrk -t$THREADS -d$DURATION --latency, $ROUNDS interleaved round(s), medians; access logs $( ((ACCESS_LOG)) && echo "on (nginx, Portcullis)" || echo off); cpu = user+sys of the proxy's processes per request"
    [[ -z ${ACCESS_LINES:-} ]] || echo "access log lines: ${ACCESS_LINES%, }"
    for c in "${PASSES[@]}"; do
      echo
      echo "$c connections"
      wrk_table "c$c-"
    done
    echo
    echo "ratios (same run; req/s higher is better, p99 and cpu/req lower)"
    for c in "${PASSES[@]}"; do
      ratio_row "c$c" portcullis nginx "c$c-"
      if has haproxy; then
        ratio_row "c$c" portcullis haproxy "c$c-"
        ratio_row "c$c" haproxy nginx "c$c-"
      fi
      if has portcullis-tls; then ratio_row "c$c" portcullis-tls nginx-tls "c$c-"; fi
      if has portcullis-apikey; then ratio_row "c$c" portcullis-apikey portcullis "c$c-"; fi
    done
  fi
  if [[ $SKIP_IDLE != 1 ]]; then
    echo
    echo "idle keep-alive connections: RSS growth per connection (nginx: master + workers), KB;"
    echo "  RSS before -> after, MB (nginx's 'before' holds its worker_connections = $MAXCONN"
    echo "  slots per worker, about 0.4 KB each, filled in at start)"
    printf '  %-12s %10s %12s %18s %20s %20s\n' connections nginx portcullis "portcullis/nginx" \
      "nginx MB" "portcullis MB"
    for n in $IDLE_CONNS; do
      printf '  %-12s %10s %12s %18s %20s %20s\n' "$n" "${IDLE_KB[nginx:$n]}" "${IDLE_KB[portcullis:$n]}" \
        "$(ratio "${IDLE_KB[portcullis:$n]}" "${IDLE_KB[nginx:$n]}")" \
        "$(mb_pair "${IDLE_RSS[nginx:$n]}")" "$(mb_pair "${IDLE_RSS[portcullis:$n]}")"
    done
  fi
  if [[ $SKIP_LOAD != 1 ]]; then
    for c in "${PASSES[@]}"; do
      for t in "${TARGETS[@]}"; do
        (( ${ERRS[c$c-$t]} == 0 )) || echo "WARNING: $t at $c connections had ${ERRS[c$c-$t]} socket errors / non-2xx responses"
        if awk -v x="${MED_RPS[c$c-$t]}" 'BEGIN { exit !(x + 0 == 0) }'; then
          echo "WARNING: no request to $t at $c connections completed (a run too short for the connections' TLS handshakes?)"
        fi
      done
    done
  fi
} | tee "$OUT/summary.txt"
echo
log "summary, raw wrk outputs, configs and logs: ${OUT#"$ROOT"/}/"
