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
#                            waits (~10 s; WAIT_TRIES x 0.1 s) until PORT accepts; fails
#                            early, showing LOG, when PID exits first
#   bench_tmp PREFIX         makes TMP, a fresh /tmp dir nginx workers can read
#   nginx_temp_paths NAME    the five `*_temp_path` lines of a private nginx, in TMP/NAME-*
#   stop_pid PID             stops one process started into PIDS (TERM, then KILL)
#   to_seconds DURATION      wrk's 10s / 2m / 1h in seconds
#   cpu_ticks PID / rss_kb PID
#                            user+sys clock ticks / resident KB of PID and its children
#                            (nginx's master and workers; a single process otherwise)
#   check_200 NAME URL       one request (curl, https unverified) must get 200 and the
#                            upstream's "hello from upstream" body
#   wrk_rounds CONNS TAG / wrk_table TAG / ratio A B
#                            interleaved wrk rounds over TARGETS with medians; see below
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
  for ((i = 0; i < ${WAIT_TRIES:-100}; i++)); do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      [[ -n $logf ]] && { echo "--- $logf ---" >&2; tail -n 30 "$logf" >&2 || true; }
      die "$name exited before accepting connections on 127.0.0.1:$port"
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  [[ -n $logf ]] && { echo "--- $logf ---" >&2; tail -n 30 "$logf" >&2 || true; }
  die "nothing accepts connections on 127.0.0.1:$port after $(( ${WAIT_TRIES:-100} / 10 )) s${OUT:+ (logs in $OUT)}"
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

stop_pid() {
  local p=$1 i keep=()
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for i in "${PIDS[@]}"; do [[ $i == "$p" ]] || keep+=("$i"); done
  PIDS=("${keep[@]}")
}

bench_tmp() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$TMP"   # nginx workers may run as 'nobody'
}

# nginx_temp_paths NAME: the `*_temp_path` lines of a private nginx config (nginx would
# otherwise use the system's dirs), each in TMP/NAME-*.
nginx_temp_paths() {
  local d
  for d in client_body proxy fastcgi uwsgi scgi; do echo "    ${d}_temp_path $TMP/$1-$d;"; done
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
$(nginx_temp_paths upstream)
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

# --- wrk measurements (proxy.sh, suite.sh) ------------------------------------------
# A script fills TARGETS (names, in run order), URL[name] (http:// or https://) and, for
# each proxy whose CPU is measured, PID[name]; it sets OUT, ROUNDS, THREADS, WARMUP and
# may put extra wrk arguments (`-H 'x-api-key: k'`, `--timeout 5s`) in WRK_ARGS.
TARGETS=()
WRK_ARGS=()
declare -A URL=() PID=() MED_RPS=() MED_P50=() MED_P99=() MED_CPU=() ERRS=()
CLK_TCK=$(getconf CLK_TCK)

to_seconds() {
  local d=$1
  [[ $d =~ ^([0-9]+)(s|m|h)?$ ]] || die "bad duration '$d' (use e.g. 10s, 1m)"
  local n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]:-s}
  case $u in s) echo "$n" ;; m) echo $((n * 60)) ;; h) echo $((n * 3600)) ;; esac
}

# proc_sum PID FILE AWK: the number AWK reads from /proc/<p>/FILE, summed over PID and its
# children.
proc_sum() {
  local p t=0
  for p in "$1" $(pgrep -P "$1" || true); do t=$(( t + $(awk "$3" "/proc/$p/$2") )); done
  echo "$t"
}
cpu_ticks() { proc_sum "$1" stat '{ print $14 + $15 }'; }
# cpu_ns PID: the CPU time PID's threads have run, in nanoseconds (schedstat: exact, not
# in 10 ms ticks; %.0f: mawk's %d stops at 2^31).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%.0f\n", t }'; }
rss_kb() { proc_sum "$1" status '/^VmRSS:/ { print $2 }'; }

check_200() {
  local name=$1 url=$2 code body
  body=$(curl -ksS --max-time 5 -H 'x-api-key: bench-key' -o - -w '\n%{http_code}' "$url") \
    || die "$name: request to $url failed"
  code=${body##*$'\n'}
  [[ $code == 200 ]] || die "$name: $url returned HTTP $code, expected 200"
  [[ $body == *"hello from upstream"* ]] || die "$name: $url did not return the upstream body"
}

# run_wrk TARGET DURATION CONNS OUTFILE: one wrk run; for a target with a PID, appends
# "cpu_ticks N" (the user+sys CPU its processes used during the run) to OUTFILE.
run_wrk() {
  local t=$1 d=$2 c=$3 f=$4 s before="" th=$THREADS
  s=$(to_seconds "$d")
  (( c < th )) && th=$c
  [[ -n ${PID[$t]:-} ]] && before=$(cpu_ticks "${PID[$t]}")
  timeout -k 5 $((s + 30)) wrk -t"$th" -c"$c" -d"$d" --latency "${WRK_ARGS[@]}" "${URL[$t]}" >"$f" 2>&1 \
    || { cat "$f" >&2; die "wrk against $t failed"; }
  [[ -n $before ]] && echo "cpu_ticks $(( $(cpu_ticks "${PID[$t]}") - before ))" >>"$f"
  return 0
}

# parse_wrk FILE -> "req_s p50_ms p99_ms errors cpu_us_per_request" (cpu 0: not measured;
# errors: socket errors and non-2xx answers)
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s")  return n * 1000
      if (u == "m")  return n * 60000
      return -1
    }
    /^ *50% / { p50 = ms($2) }
    /^ *99% / { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /requests in / { reqs = $1 }
    /^cpu_ticks / { ticks = $2 }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END {
      if (rps == "" || p50 == "" || p99 == "") exit 1
      cpu = (ticks != "" && reqs > 0) ? ticks * 1e6 / tck / reqs : 0
      printf "%.2f %.4f %.4f %d %.2f\n", rps, p50, p99, err, cpu
    }' tck="$CLK_TCK" "$1"
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# wrk_rounds CONNS TAG: a warm-up run per target (WARMUP, unless 0), then ROUNDS rounds of
# wrk -cCONNS over TARGETS — even rounds in reverse order: whichever runs second in a pair
# is measured a few percent lower on a small box (an A/A run of two identical Portcullis
# configs gave 0.91 without this), so the order must not favour anyone. Raw outputs go to
# $OUT/TAGround<r>-<target>.txt; the medians over rounds to MED_RPS[TAG<target>],
# MED_P50, MED_P99, MED_CPU (µs per request; 0 when not measured) and the summed socket
# errors and non-2xx answers to ERRS.
wrk_rounds() {
  local c=$1 tag=$2 r t k f rps p50 p99 err cpu order
  local -A l_rps=() l_p50=() l_p99=() l_cpu=()
  if [[ $WARMUP != 0 ]] && (( $(to_seconds "$WARMUP") > 0 )); then
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" "$c" "$OUT/${tag}warmup-$t.txt"; done
    log "warm-up done ($WARMUP per target)"
  fi
  for t in "${TARGETS[@]}"; do ERRS[$tag$t]=0; done
  for ((r = 1; r <= ROUNDS; r++)); do
    order=("${TARGETS[@]}")
    if (( r % 2 == 0 )); then
      order=()
      for ((k = ${#TARGETS[@]} - 1; k >= 0; k--)); do order+=("${TARGETS[$k]}"); done
    fi
    for t in "${order[@]}"; do
      f="$OUT/${tag}round$r-$t.txt"
      run_wrk "$t" "$DURATION" "$c" "$f"
      read -r rps p50 p99 err cpu < <(parse_wrk "$f") || die "could not parse wrk output $f"
      l_rps[$t]+="$rps "; l_p50[$t]+="$p50 "; l_p99[$t]+="$p99 "; l_cpu[$t]+="$cpu "
      ERRS[$tag$t]=$(( ${ERRS[$tag$t]} + err ))
      printf '    round %d %-18s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %d  cpu %6.2f us/req\n' \
        "$r" "$t" "$rps" "$p50" "$p99" "$err" "$cpu"
    done
  done
  for t in "${TARGETS[@]}"; do
    MED_RPS[$tag$t]=$(tr ' ' '\n' <<<"${l_rps[$t]}" | grep . | median)
    MED_P50[$tag$t]=$(tr ' ' '\n' <<<"${l_p50[$t]}" | grep . | median)
    MED_P99[$tag$t]=$(tr ' ' '\n' <<<"${l_p99[$t]}" | grep . | median)
    MED_CPU[$tag$t]=$(tr ' ' '\n' <<<"${l_cpu[$t]}" | grep . | median)
  done
}

# wrk_table TAG: the medians of the last wrk_rounds with this TAG, one line per target.
wrk_table() {
  local tag=$1 t
  printf '%-18s %12s %10s %10s %8s %12s\n' target "req/s" "p50 ms" "p99 ms" errors "cpu us/req"
  for t in "${TARGETS[@]}"; do
    printf '%-18s %12.0f %10.3f %10.3f %8d %12s\n' "$t" "${MED_RPS[$tag$t]}" "${MED_P50[$tag$t]}" \
      "${MED_P99[$tag$t]}" "${ERRS[$tag$t]}" \
      "$( [[ -z ${PID[$t]:-} ]] && echo - || printf '%.2f' "${MED_CPU[$tag$t]}")"
  done
}

# ratio A B -> A/B to three places, or n/a when B is 0 or missing
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b + 0 > 0) printf "%.3f", a / b; else printf "n/a" }'; }
