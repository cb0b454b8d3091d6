#!/usr/bin/env bash
# bench/limits.sh — what a per-consumer token limit costs: req/s and p99 of one gateway
# over three model routes in front of the same fast upstream (nginx):
#   plain  — `[routes.ai]`, no limits;
#   local  — the same with a per-consumer token limit counted in-process;
#   redis  — the same with the limit counted in a private `redis-server`.
# The budget is far above what the run uses, so every request is admitted and the cost
# measured is the reservation and settlement alone. No auth plugin runs (it would cost the
# same on every route), so every request is the same (empty) consumer: one hot key, the
# worst case for contention.
#
# Runs wrk against [plain, local, redis], interleaved, ROUNDS times, and prints per route
# the median req/s and p99, the ratios local/plain and redis/plain, the added p99 (ms),
# the gateway's CPU per request (its threads' /proc schedstat over the run / requests) and
# its ratio to plain's, and Redis round trips per request (EVALSHA calls from
# `INFO commandstats` / requests).
#
# Usage: bash bench/limits.sh
#        PORTCULLIS_BIN=target/debug/portcullis DURATION=3s ROUNDS=1 bash bench/limits.sh
# Env: DURATION [10s], ROUNDS [3], CONNECTIONS [64], THREADS [2],
#      PORTCULLIS_BIN [target/release/portcullis; built with cargo build --release when
#      that default is missing]. Raw outputs go to bench/out/limits-<stamp>/.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DEFAULT_BIN=target/release/portcullis
BIN=${PORTCULLIS_BIN:-$DEFAULT_BIN}

BENCH_NAME=limits.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

had_redis=$(command -v redis-server || true)
need_apt wrk nginx redis-server
# The package starts a system redis; this benchmark starts its own.
[[ -n $had_redis ]] || service redis-server stop >/dev/null 2>&1 || true
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $BIN ]]; then
  [[ $BIN == "$DEFAULT_BIN" ]] && { log "building Portcullis (cargo build --release)"; cargo build --release; }
  [[ -x $BIN ]] || die "Portcullis binary '$BIN' not found"
fi

OUT="$ROOT/bench/out/limits-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
bench_tmp portcullis-limits
read -r UP_PORT PC_PORT RD_PORT < <(free_ports 3)

upstream_nginx "$UP_PORT" "default_type application/json;
            return 200 '{\"model\":\"m\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20}}';"
private_redis "$RD_PORT"

route() { # NAME LIMITS
  printf '[[routes]]\nname = "%s"\npath_prefix = "/%s"\nstrip_prefix = true\nupstream = "up"\nlimits = %s\n\n[routes.ai]\n\n' "$1" "$1" "$2"
}
{
  printf '[server]\nlisten = "127.0.0.1:%s"\n\n' "$PC_PORT"
  printf '[redis]\nurl = "redis://127.0.0.1:%s"\ntimeout = "100ms"\n\n' "$RD_PORT"
  printf '[[upstreams]]\nname = "up"\ntargets = [{ address = "127.0.0.1:%s" }]\n\n' "$UP_PORT"
  route plain '[]'
  route local '["local"]'
  route redis '["redis"]'
  printf '[[limits]]\nname = "local"\ntokens = 1000000000000\nwindow = "1m"\nkey = ["consumer"]\n\n'
  printf '[[limits]]\nname = "redis"\ntokens = 1000000000000\nwindow = "1m"\nkey = ["consumer"]\nbackend = "redis"\n'
} >"$TMP/portcullis.toml"
wait_port "$UP_PORT"
wait_port "$RD_PORT"
"$BIN" run --config "$TMP/portcullis.toml" --log-level warn >"$TMP/portcullis.log" 2>&1 &
PIDS+=("$!")
GATEWAY=$!
wait_port "$PC_PORT"
for r in plain local redis; do
  code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PC_PORT/$r/v1/chat/completions")
  [[ $code == 200 ]] || die "/$r answered $code"
done

evalsha_calls() {
  redis-cli -p "$RD_PORT" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | awk '{s+=$1} END {print s+0}'
}

# run ROUTE ROUND: one wrk run; writes req/s, requests and p99 (ms) to $TMP/ROUTE.results
run() {
  local r=$1 n=$2 f="$OUT/wrk-$1-$2.txt" before after cpu
  before=$(evalsha_calls)
  cpu=$(cpu_ns "$GATEWAY")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    "http://127.0.0.1:$PC_PORT/$r/v1/chat/completions" >"$f"
  cpu=$(( $(cpu_ns "$GATEWAY") - cpu ))
  after=$(evalsha_calls)
  python3 - "$f" "$r" "$((after - before))" "$cpu" >>"$TMP/$r.results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
v, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
p99 = float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
print(rps, n, p99, sys.argv[3], int(sys.argv[4]) / n / 1e3)
PY
}

for ((i = 1; i <= ROUNDS; i++)); do
  order=(plain local redis)
  (( i % 2 == 0 )) && order=(redis local plain)
  for r in "${order[@]}"; do log "round $i: $r"; run "$r" "$i"; done
done

python3 - "$TMP" <<'PY'
import statistics, sys
res = {}
for r in ("plain", "local", "redis"):
    rows = [list(map(float, l.split())) for l in open(f"{sys.argv[1]}/{r}.results")]
    res[r] = dict(rps=statistics.median(x[0] for x in rows),
                  p99=statistics.median(x[2] for x in rows),
                  trips=sum(x[3] for x in rows) / max(1.0, sum(x[1] for x in rows)),
                  cpu=statistics.median(x[4] for x in rows))
print(f"{'route':8} {'req/s':>10} {'p99 ms':>8} {'gateway CPU us/req':>19} {'redis round trips/req':>22}")
for r, v in res.items():
    print(f"{r:8} {v['rps']:10.0f} {v['p99']:8.2f} {v['cpu']:19.2f} {v['trips']:22.2f}")
for r in ("local", "redis"):
    print(f"{r}/plain req/s: {res[r]['rps'] / res['plain']['rps']:.3f}   "
          f"added p99: {res[r]['p99'] - res['plain']['p99']:+.2f} ms   "
          f"gateway CPU per request: {res[r]['cpu'] / res['plain']['cpu']:.3f}x (+{res[r]['cpu'] - res['plain']['cpu']:.2f} us)")
PY
