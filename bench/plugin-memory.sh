#!/usr/bin/env bash
# bench/plugin-memory.sh — gateway memory against the number of routes that use one plugin
# (issue 19): the shipped Python api-key plugin (componentize-py) on 1, 10 and 100 routes,
# each route with a key of its own (so every route's plugin config differs).
#
# For each route count (everything on 127.0.0.1, ports picked free at run time):
#   1. generates a config: one `[[plugins]]` entry, N routes `/rI/` with config
#      `keys = [{ key = "k-I" }]`, all in front of a private nginx (fixed 200 body);
#   2. starts the gateway, waits until it accepts, checks that every route answers 200 with
#      its own key (and 401 with another route's), and reads its RSS (VmRSS) "at start";
#   3. runs wrk for DURATION across all the routes at once (a Lua script rotates the path
#      and key request by request), checks that no answer was an error (socket errors, such
#      as timeouts of a dev build, are shown), and reads RSS "after load";
#   4. stops the gateway.
# Prints a table: routes, RSS at start, RSS after load (MB), each as a ratio to 1 route, and
# the anonymous/file-backed split of the RSS after load (from /proc/PID/status).
# The issue's goal: 100 routes ≤ 2× the RSS at start of 1 route, and ≤ 500 MB after load.
#
# Usage: bash bench/plugin-memory.sh
#        PORTCULLIS_BIN=target/debug/portcullis DURATION=3s bash bench/plugin-memory.sh
# Env: PORTCULLIS_BIN [target/release/portcullis] (a missing default is built with
#      `cargo build --release`), ROUTES ["1 10 100"], DURATION [10s], CONNECTIONS [64],
#      THREADS [2], WORKERS [2] (the gateway's `server.workers`), PLUGIN_EXTRA [] (more lines
#      for the `[[plugins]]` entry, e.g. 'max_warm = 100').
# The component is built by plugins/build-polyglot.sh (python). Generated configs and logs
# go to bench/out/plugin-memory-<stamp>/.
set -euo pipefail

DEFAULT_BIN=target/release/portcullis
BIN=${PORTCULLIS_BIN:-$DEFAULT_BIN}
ROUTES=${ROUTES:-"1 10 100"}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
PLUGIN_EXTRA=${PLUGIN_EXTRA:-}

BENCH_NAME=plugin-memory.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for n in $ROUTES; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "ROUTES must list positive numbers, got '$n'"; done
need_apt wrk nginx curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $BIN ]]; then
  [[ $BIN == "$DEFAULT_BIN" ]] && { log "building Portcullis (cargo build --release)"; cargo build --release; }
  [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found"
fi
log "building the Python api-key plugin"
bash plugins/build-polyglot.sh python >/dev/null || die "the Python plugin toolchain is unavailable"
COMPONENT="$ROOT/plugins/target/components/python-api-key.wasm"
[[ -f $COMPONENT ]] || die "$COMPONENT was not built"

OUT="$ROOT/bench/out/plugin-memory-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
bench_tmp portcullis-plugin-memory
read -r UP_PORT < <(free_ports 1)
upstream_nginx "$UP_PORT" "default_type text/plain; return 200 'ok';"
wait_port "$UP_PORT"

# The wrk script: each request goes to the next route with that route's key.
cat >"$TMP/rotate.lua" <<'LUA'
local n = tonumber(os.getenv("BENCH_ROUTES"))
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("GET", "/r" .. i .. "/x", { ["x-api-key"] = "k-" .. i })
end
LUA

# status_kb PID FIELD: a field of /proc/PID/status, in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# code PORT PATH KEY: the status the gateway answers.
code() { curl -sS -o /dev/null -w '%{http_code}' -H "x-api-key: $3" "http://127.0.0.1:$1$2"; }

: >"$TMP/results"
for n in $ROUTES; do
  read -r PORT < <(free_ports 1)
  conf="$TMP/routes-$n.toml"
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = %s\nplugin_cache_dir = "%s"\n\n' \
      "$PORT" "$WORKERS" "$TMP/wasm-cache"
    printf '[[upstreams]]\nname = "up"\ntargets = [{ address = "127.0.0.1:%s" }]\n\n' "$UP_PORT"
    # A CPU deadline far above the call's cost: under load on a shared box (or a dev build)
    # the 20 ms default can cut a call short, and this measures memory, not latency.
    printf '[[plugins]]\nname = "api-key"\npath = "%s"\ntimeout = "500ms"\n%s\n' "$COMPONENT" "$PLUGIN_EXTRA"
    for ((i = 1; i <= n; i++)); do
      printf '[[routes]]\nname = "r%d"\npath_prefix = "/r%d"\nupstream = "up"\n' "$i" "$i"
      printf 'plugins = [{ name = "api-key", config = { keys = [{ key = "k-%d" }] } }]\n\n' "$i"
    done
  } >"$conf"
  # Compiles the component into the cache first, so the run measures no compiler.
  "$BIN" validate "$conf" >/dev/null
  "$BIN" run --config "$conf" --log-level warn >"$TMP/routes-$n.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  log "$n route(s): gateway pid $pid on 127.0.0.1:$PORT"
  # Loading configures one instance per route: a dev build with 100 routes takes a while.
  for ((t = 0; t < 1200; t++)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$TMP/routes-$n.log" >&2; die "the gateway exited"; }
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "the gateway did not listen within 120 s"
  rss_start=$(status_kb "$pid" VmRSS)
  for ((i = 1; i <= n; i++)); do
    c=$(code "$PORT" "/r$i/x" "k-$i")
    [[ $c == 200 ]] || die "/r$i/x with its key answered $c (log: $TMP/routes-$n.log)"
  done
  c=$(code "$PORT" "/r$n/x" "k-0")
  [[ $c == 401 ]] || die "/r$n/x with a wrong key answered $c, expected 401"
  BENCH_ROUTES=$n wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s \
    -s "$TMP/rotate.lua" "http://127.0.0.1:$PORT" >"$OUT/wrk-$n.txt"
  if grep -q "Non-2xx" "$OUT/wrk-$n.txt"; then
    cat "$OUT/wrk-$n.txt" >&2
    die "the gateway answered errors on $n route(s) (log: $OUT/routes-$n.log)"
  fi
  grep "Socket errors" "$OUT/wrk-$n.txt" || true
  rps=$(awk '/Requests\/sec/ { print $2 }' "$OUT/wrk-$n.txt")
  echo "$n $rss_start $(status_kb "$pid" VmRSS) $(status_kb "$pid" RssAnon) $(status_kb "$pid" RssFile) $rps" \
    >>"$TMP/results"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  PIDS=("${PIDS[@]/$pid/}")
done
cp "$TMP/results" "$OUT/results.txt"

python3 - "$TMP/results" "$BIN" "$DURATION" "$CONNECTIONS" "$WORKERS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
rows = [(int(r[0]), *(int(x) / 1024 for x in r[1:5]), float(r[5])) for r in rows]
base = rows[0]
print(f"plugin memory: {sys.argv[2]}, Python api-key on every route, {sys.argv[5]} workers, "
      f"wrk {sys.argv[4]} connections for {sys.argv[3]} across all routes")
print(f"{'routes':>6} {'start MB':>9} {'ratio':>6} {'loaded MB':>10} {'ratio':>6} "
      f"{'anon MB':>8} {'file MB':>8} {'req/s':>8}")
for n, start, loaded, anon, file, rps in rows:
    print(f"{n:6d} {start:9.1f} {start / base[1]:6.2f} {loaded:10.1f} {loaded / base[2]:6.2f} "
          f"{anon:8.1f} {file:8.1f} {rps:8.0f}")
print(f"(ratios to {base[0]} route(s); goal for 100 routes: start <= 2x, after load <= 500 MB)")
PY
