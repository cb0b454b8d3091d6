#!/usr/bin/env bash
# bench/plugin-caps.sh — what plugin capabilities cost, on one gateway in front of a fast
# upstream (nginx), with a local IdP (Python):
#   1. auth: `/free` (no plugin), `/apikey` (the api-key plugin) and `/introspect` (the
#      oauth2-introspection plugin, its cache warm: the IdP is asked once, then every
#      request is answered from the in-process key-value store). One connection, so the
#      mean latency is the cost of one request: prints the added µs of introspection over
#      api-key, and req/s.
#   2. the Python rate-limit plugin with its counters in process (`/rl-local`) and in a
#      private redis-server (`/rl-redis`), limit far above the load: req/s, p99, and the
#      ratios to `/free`.
#   3. a plugin waiting on the network: the p99 of `/free` alone, then while 100
#      connections keep `/slow` busy (the reach plugin, whose IdP call takes 200 ms):
#      prints the ratio (the issue's goal: within 2x).
#
# Usage: bash bench/plugin-caps.sh
#        PROFILE=debug DURATION=2s ROUNDS=1 bash bench/plugin-caps.sh   # smoke run on the dev build
# Env: PROFILE [release] (binary: target/$PROFILE/portcullis; a missing release build is
#      built), DURATION [10s], ROUNDS [3], CONNECTIONS [32] (parts 2 and 3), THREADS [2].
# Raw outputs go to bench/out/plugin-caps-<stamp>/.
set -euo pipefail

PROFILE=${PROFILE:-release}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
BIN=target/$PROFILE/portcullis

BENCH_NAME=plugin-caps.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

had_redis=$(command -v redis-server || true)
need_apt wrk nginx redis-server curl
[[ -n $had_redis ]] || service redis-server stop >/dev/null 2>&1 || true
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $BIN ]]; then
  [[ $PROFILE == release ]] && { log "building Portcullis (cargo build --release)"; cargo build --release; }
  [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found (cargo build${PROFILE/debug/})"
fi
log "building the plugins"
bash plugins/build.sh api-key oauth2-introspection reach >/dev/null
bash plugins/build-polyglot.sh python >/dev/null || die "the Python plugin toolchain is unavailable"
COMP="$ROOT/plugins/target/components"

OUT="$ROOT/bench/out/plugin-caps-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
bench_tmp portcullis-plugin-caps
read -r UP_PORT PC_PORT RD_PORT IDP_PORT < <(free_ports 4)

upstream_nginx "$UP_PORT" "default_type text/plain; return 200 'ok';"
private_redis "$RD_PORT"
# The IdP: introspection (always active, counted) and a 200 ms `/slow`.
cat >"$TMP/idp.py" <<'PY'
import http.server, json, sys, time
hits = 0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        global hits
        hits += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"active": True, "sub": "alice", "exp": int(time.time()) + 86400}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/hits":
            body = str(hits).encode()
        else:
            time.sleep(0.2)
            body = b"{}"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$TMP/idp.py" "$IDP_PORT" >"$TMP/idp.log" 2>&1 &
PIDS+=("$!")

route() { # NAME PLUGINS
  printf '[[routes]]\nname = "%s"\npath_prefix = "/%s"\nupstream = "up"\nplugins = %s\n\n' "$1" "$1" "$2"
}
{
  printf '[server]\nlisten = "127.0.0.1:%s"\nplugin_cache_dir = "%s"\n\n' "$PC_PORT" "$TMP/wasm-cache"
  printf '[redis]\nurl = "redis://127.0.0.1:%s"\ntimeout = "100ms"\n\n' "$RD_PORT"
  printf '[[upstreams]]\nname = "up"\ntargets = [{ address = "127.0.0.1:%s" }]\n\n' "$UP_PORT"
  printf '[[plugins]]\nname = "api-key"\npath = "%s/api-key.wasm"\n\n' "$COMP"
  printf '[[plugins]]\nname = "introspect"\npath = "%s/oauth2-introspection.wasm"\nallowed_hosts = ["http://127.0.0.1:%s"]\nkeyvalue = { namespace = "oauth2-introspection" }\n\n' "$COMP" "$IDP_PORT"
  printf '[[plugins]]\nname = "rl-local"\npath = "%s/python-rate-limit.wasm"\ntimeout = "200ms"\nkeyvalue = { namespace = "rate-limit" }\n\n' "$COMP"
  printf '[[plugins]]\nname = "rl-redis"\npath = "%s/python-rate-limit.wasm"\ntimeout = "200ms"\nkeyvalue = { namespace = "rate-limit", backend = "redis" }\n\n' "$COMP"
  printf '[[plugins]]\nname = "reach"\npath = "%s/reach.wasm"\nallowed_hosts = ["http://127.0.0.1:%s"]\npool_size = 128\n\n' "$COMP" "$IDP_PORT"
  route free '[]'
  route apikey '[{ name = "api-key", config = { keys = [{ key = "k-123", consumer = "alice" }] } }]'
  route introspect "[{ name = \"introspect\", config = { introspection_url = \"http://127.0.0.1:$IDP_PORT/introspect\", client_id = \"gw\", client_secret = \"s\" } }]"
  route rl-local '[{ name = "rl-local", config = { limit = 1000000000, window_seconds = 60 } }]'
  route rl-redis '[{ name = "rl-redis", config = { limit = 1000000000, window_seconds = 60 } }]'
  route slow "[{ name = \"reach\", config = { fetch = \"http://127.0.0.1:$IDP_PORT/slow\" } }]"
} >"$TMP/portcullis.toml"
wait_port "$UP_PORT"
wait_port "$RD_PORT"
wait_port "$IDP_PORT"
log "compiling the plugins into the cache (portcullis validate)"
"$BIN" validate "$TMP/portcullis.toml" >/dev/null
"$BIN" run --config "$TMP/portcullis.toml" --log-level warn >"$TMP/portcullis.log" 2>&1 &
PIDS+=("$!")
wait_port "$PC_PORT" "${PIDS[-1]}" "$TMP/portcullis.log" portcullis

H_KEY='x-api-key: k-123'
H_TOKEN='authorization: Bearer bench-token'
check() { # PATH HEADER
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "$2" "http://127.0.0.1:$PC_PORT$1")
  [[ $code == 200 ]] || die "$1 answered $code (log: $TMP/portcullis.log)"
}
check /free/x 'x-none: 1'
check /apikey/x "$H_KEY"
check /introspect/x "$H_TOKEN"   # warms the cache
check /rl-local/x 'x-none: 1'
check /rl-redis/x 'x-none: 1'

# wrk ROUTE HEADER CONNECTIONS LABEL -> appends "req/s mean_us p99_ms" to $TMP/LABEL.results
run() {
  local path=$1 header=$2 conns=$3 label=$4 f="$OUT/wrk-$4-$(date +%s%N).txt"
  local threads=$THREADS
  (( conns < threads )) && threads=$conns
  wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -H "$header" \
    "http://127.0.0.1:$PC_PORT$path" >"$f"
  python3 - "$f" >>"$TMP/$label.results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
v, u = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text).groups()
mean_us = float(v) * unit[u] * 1e3
v, u = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
print(rps, mean_us, float(v) * unit[u])
PY
}

for ((i = 1; i <= ROUNDS; i++)); do
  log "round $i: auth plugins, one connection"
  for r in free apikey introspect; do
    case $r in apikey) h=$H_KEY ;; introspect) h=$H_TOKEN ;; *) h='x-none: 1' ;; esac
    run "/$r/x" "$h" 1 "auth-$r"
  done
  log "round $i: rate-limit plugin, $CONNECTIONS connections"
  for r in free rl-local rl-redis; do run "/$r/x" 'x-none: 1' "$CONNECTIONS" "rl-$r"; done
  log "round $i: /free alone, then beside 100 connections waiting on /slow"
  run /free/x 'x-none: 1' "$CONNECTIONS" free-alone
  wrk -t1 -c100 -d"$DURATION" "http://127.0.0.1:$PC_PORT/slow/x" >"$OUT/wrk-slow-$i.txt" &
  slow_pid=$!
  # Let the slow connections fill up before measuring beside them.
  sleep 1
  run /free/x 'x-none: 1' "$CONNECTIONS" free-beside-slow
  wait "$slow_pid"
done
idp_calls=$(curl -sS "http://127.0.0.1:$IDP_PORT/hits")

python3 - "$TMP" "$idp_calls" <<'PY'
import statistics, sys
d = sys.argv[1]
def load(label):
    rows = [list(map(float, l.split())) for l in open(f"{d}/{label}.results")]
    return dict(rps=statistics.median(r[0] for r in rows),
                mean_us=statistics.median(r[1] for r in rows),
                p99=statistics.median(r[2] for r in rows))
print("1. auth plugins, one connection (medians)")
print(f"   {'route':12} {'req/s':>10} {'mean us':>9}")
auth = {r: load(f"auth-{r}") for r in ("free", "apikey", "introspect")}
for r, v in auth.items():
    print(f"   {r:12} {v['rps']:10.0f} {v['mean_us']:9.1f}")
print(f"   introspection (warm cache) over api-key: {auth['introspect']['mean_us'] - auth['apikey']['mean_us']:+.1f} us per request "
      f"(api-key over no plugin: {auth['apikey']['mean_us'] - auth['free']['mean_us']:+.1f} us); IdP calls: {sys.argv[2]}")
print("2. rate-limit plugin (Python)")
rl = {r: load(f"rl-{r}") for r in ("free", "rl-local", "rl-redis")}
print(f"   {'route':12} {'req/s':>10} {'p99 ms':>8}")
for r, v in rl.items():
    print(f"   {r:12} {v['rps']:10.0f} {v['p99']:8.2f}")
for r in ("rl-local", "rl-redis"):
    print(f"   {r}/free req/s: {rl[r]['rps'] / rl['free']['rps']:.3f}")
print("3. /free p99 beside 100 connections waiting 200 ms in a plugin")
a, b = load("free-alone"), load("free-beside-slow")
print(f"   alone {a['p99']:.2f} ms, beside {b['p99']:.2f} ms: ratio {b['p99'] / a['p99']:.2f} (goal: <= 2)")
PY
