#!/usr/bin/env bash
# bench/events.sh — stream-native plugins (stream-transform): the per-event cost of a
# no-op on-event plugin and of `redact`, and SSE relay throughput with each against no
# plugin, in one run. Not a test: it prints numbers and same-run ratios.
#
# Targets (one gateway, workers = 1, three routes on one port; upstream bench/sse_bench.rs
# `serve`, chat chunks whose content is words ending in a space):
#   none    a route without plugins
#   noop    a route with stream-probe {action = "pass"}: on-event returns pass
#   redact  a route with redact (defaults: e-mail and API-key patterns)
# Per round and target: a throughput run (STREAMS concurrent streams of EVENTS events, 64
# events per upstream write, no pauses) and a latency run (one stream of LAT_EVENTS events,
# one per write, 1 ms apart; latency = arrival − the server's stamp in the event). Medians
# over rounds; rounds alternate the target order.
#
# Per-event cost (µs/event) = 1e6/events_per_s(target) − 1e6/events_per_s(none): with one
# worker the gateway's events are handled one after another, so the difference in time per
# event is what the plugin path adds (plugin call, event cut, re-encoding), client and
# upstream being the same in both.
#
# Usage:
#   bash bench/events.sh                                   # release build (built if missing)
#   PROFILE=debug ROUNDS=1 EVENTS=2000 LAT_EVENTS=300 bash bench/events.sh   # smoke run
# Env knobs:
#   ROUNDS [3]  STREAMS [4]  EVENTS [50000]  LAT_EVENTS [3000]
#   PROFILE [release]  (binaries: target/$PROFILE/portcullis, target/$PROFILE/examples/sse-bench)
# The plugins are built by plugins/build.sh when missing (always release wasm).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-4}
EVENTS=${EVENTS:-50000}
LAT_EVENTS=${LAT_EVENTS:-3000}
PROFILE=${PROFILE:-release}

BENCH_NAME=events.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in ROUNDS STREAMS EVENTS LAT_EVENTS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
BIN=target/$PROFILE/portcullis
BENCH=target/$PROFILE/examples/sse-bench
build_sse_bench "$BIN" "$BENCH"
COMPONENTS=$PWD/plugins/target/components
if [[ ! -f $COMPONENTS/redact.wasm || ! -f $COMPONENTS/stream-probe.wasm ]]; then
  log "building the plugins (plugins/build.sh redact hostile/stream-probe)"
  bash plugins/build.sh redact hostile/stream-probe >/dev/null
fi

bench_tmp portcullis-events-bench
read -r UP GW < <(free_ports 2)

"$BENCH" serve "$UP" >"$TMP/upstream.log" 2>&1 &
PIDS+=("$!"); wait_port "$UP" "$!" "$TMP/upstream.log"

cat >"$TMP/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
workers = 1
plugin_cache_dir = "$TMP/wasm-cache"

[[plugins]]
name = "noop"
path = "$COMPONENTS/stream-probe.wasm"

[[plugins]]
name = "redact"
path = "$COMPONENTS/redact.wasm"

[[upstreams]]
name = "up"
targets = [{ address = "127.0.0.1:$UP" }]

[[routes]]
name = "none"
path_prefix = "/none"
strip_prefix = true
upstream = "up"

[[routes]]
name = "noop"
path_prefix = "/noop"
strip_prefix = true
upstream = "up"
plugins = [{ name = "noop", config = { action = "pass" } }]

[[routes]]
name = "redact"
path_prefix = "/redact"
strip_prefix = true
upstream = "up"
plugins = [{ name = "redact" }]
TOML
"$BIN" run --config "$TMP/gateway.toml" --log-level warn >"$TMP/gateway.log" 2>&1 &
PIDS+=("$!"); wait_port "$GW" "$!" "$TMP/gateway.log"

PATH_=/v1/words/chat/completions
TARGETS=(none noop redact)
log "$PROFILE build; $ROUNDS round(s); throughput: $STREAMS streams x $EVENTS events; latency: $LAT_EVENTS events, 1 ms apart"
# A warm-up stream per route (instances, pools).
for t in "${TARGETS[@]}"; do "$BENCH" run "http://127.0.0.1:$GW/$t$PATH_" throughput 1 100 ask >/dev/null; done

declare -A TPUT P50 P99
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${TARGETS[@]}")
  if (( r % 2 == 0 )); then order=(); for ((k = ${#TARGETS[@]} - 1; k >= 0; k--)); do order+=("${TARGETS[$k]}"); done; fi
  for t in "${order[@]}"; do
    url="http://127.0.0.1:$GW/$t$PATH_"
    read -r _ eps < <("$BENCH" run "$url" throughput "$STREAMS" "$EVENTS" ask)
    read -r _ p50 p99 _ < <("$BENCH" run "$url" latency 1 "$LAT_EVENTS" ask)
    TPUT[$t]+="$eps "; P50[$t]+="$p50 "; P99[$t]+="$p99 "
    printf '    round %d %-7s %12.0f events/s   latency p50 %8.1f us  p99 %8.1f us\n' "$r" "$t" "$eps" "$p50" "$p99"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A M_T M_50 M_99
echo
printf '%-8s %14s %12s %12s %14s\n' target "events/s" "p50 us" "p99 us" "us/event"
for t in "${TARGETS[@]}"; do
  M_T[$t]=$(median <<<"${TPUT[$t]}"); M_50[$t]=$(median <<<"${P50[$t]}"); M_99[$t]=$(median <<<"${P99[$t]}")
done
for t in "${TARGETS[@]}"; do
  printf '%-8s %14.0f %12.1f %12.1f %14.2f\n' "$t" "${M_T[$t]}" "${M_50[$t]}" "${M_99[$t]}" \
    "$(awk -v t="${M_T[$t]}" -v n="${M_T[none]}" 'BEGIN { print 1e6 / t - 1e6 / n }')"
done
echo
awk -v none="${M_T[none]}" -v noop="${M_T[noop]}" -v red="${M_T[redact]}" \
    -v n50="${M_50[none]}" -v o50="${M_50[noop]}" -v r50="${M_50[redact]}" 'BEGIN {
  printf "events/s   noop/none %.3f   redact/none %.3f\n", noop / none, red / none
  printf "per event  noop %+.2f us   redact %+.2f us   (1e6/events_per_s vs none, one worker)\n", 1e6 / noop - 1e6 / none, 1e6 / red - 1e6 / none
  printf "added p50  noop %+.1f us   redact %+.1f us   (latency run, vs none)\n", o50 - n50, r50 - n50
}'
