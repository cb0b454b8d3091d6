#!/usr/bin/env bash
# bench/composite.sh — composite route benchmark: one request fanned out to three parts,
# against the parts called directly and against three separate calls through the gateway.
# Not a test: it prints numbers and same-run ratios; the goal it names is for the release
# build.
#
# Targets (all on 127.0.0.1, ports picked free at run time):
#   detect, classify, segment   three JSON "model services" (one private nginx, three ports;
#                               answers of ~0.2, 0.5 and 1 KiB), called directly
#   single                      Portcullis, a plain route to `segment` (one upstream hop)
#   composite                   Portcullis, a composite route: the three parts at once,
#                               one merged JSON answer
# Per round:
#   latency     wrk -t1 -c1 (one request at a time) --latency against each target:
#               added latency = composite p50 − the slowest part's direct p50
#               (and composite p50 − single p50: what the fan-out and merge add over a
#               one-upstream hop)
#   throughput  wrk -tTHREADS -cCONNECTIONS against single and composite:
#               composite req/s against single req/s ÷ 3 (a client making the three
#               calls itself through the gateway)
# Medians over rounds; rounds alternate the target order.
#
# Usage:
#   bash bench/composite.sh                              # release build (built if missing)
#   PROFILE=debug ROUNDS=1 DURATION=2s bash bench/composite.sh   # smoke run on the dev build
# Env knobs:
#   ROUNDS [3]  DURATION [5s]  CONNECTIONS [32]  THREADS [2]
#   PROFILE [release]  (binary: target/$PROFILE/portcullis)
# Goal (issue 18): added latency over the slowest part ≤ 100 µs p50 (release).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PROFILE=${PROFILE:-release}

BENCH_NAME=composite.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in ROUNDS CONNECTIONS THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "DURATION must be seconds, e.g. 5s"
BIN=target/$PROFILE/portcullis
if [[ ! -x $BIN ]]; then
  if [[ $PROFILE == release ]]; then
    log "building (cargo build --release --bin portcullis)"
    cargo build --release --bin portcullis
  else
    log "building (cargo build --bin portcullis)"
    cargo build --bin portcullis
  fi
fi
need_apt wrk nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v curl >/dev/null 2>&1 || die "'curl' is required"

bench_tmp portcullis-composite-bench
read -r D C S GW < <(free_ports 4)

# Three answers of different sizes, so the merge copies something.
json_list() { # N LABEL -> {"items":[{"label":LABEL,"score":0.5,"i":0},…]}
  python3 -c 'import json,sys; n=int(sys.argv[1]); print(json.dumps({"items":[{"label":sys.argv[2],"score":0.5,"i":i} for i in range(n)]}, separators=(",",":")))' "$1" "$2"
}
DETECT_BODY=$(json_list 4 cat)
CLASSIFY_BODY=$(json_list 10 tabby)
SEGMENT_BODY=$(json_list 20 sky)

cat >"$TMP/parts-nginx.conf" <<EOF
worker_processes 1;
pid $TMP/parts-nginx.pid;
error_log $TMP/parts-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths parts)
    default_type application/json;
    server { listen 127.0.0.1:$D backlog=4096; location / { return 200 '$DETECT_BODY'; } }
    server { listen 127.0.0.1:$C backlog=4096; location / { return 200 '$CLASSIFY_BODY'; } }
    server { listen 127.0.0.1:$S backlog=4096; location / { return 200 '$SEGMENT_BODY'; } }
}
EOF
"$NGINX" -p "$TMP/" -e "$TMP/parts-error.log" -c "$TMP/parts-nginx.conf" -g 'daemon off;' \
  >"$TMP/parts-nginx.log" 2>&1 &
PIDS+=("$!")
for p in $D $C $S; do wait_port "$p" "$!" "$TMP/parts-error.log" nginx; done

cat >"$TMP/portcullis.toml" <<EOF
[server]
listen = "127.0.0.1:$GW"

[[upstreams]]
name = "detection"
targets = [ { address = "127.0.0.1:$D" } ]

[[upstreams]]
name = "classification"
targets = [ { address = "127.0.0.1:$C" } ]

[[upstreams]]
name = "segmentation"
targets = [ { address = "127.0.0.1:$S" } ]

[[routes]]
name = "single"
path = "/single"
upstream = "segmentation"

[[routes]]
name = "vision"
path = "/vision"

[[routes.parts]]
name = "detect"
upstream = "detection"
path = "/detect"
required = true

[[routes.parts]]
name = "classify"
upstream = "classification"
path = "/classify"

[[routes.parts]]
name = "segment"
upstream = "segmentation"
path = "/segment"
EOF
"$BIN" run --config "$TMP/portcullis.toml" --log-level warn >"$TMP/portcullis.log" 2>&1 &
PIDS+=("$!")
wait_port "$GW" "$!" "$TMP/portcullis.log" portcullis

declare -A URL=(
  [detect]="http://127.0.0.1:$D/detect"
  [classify]="http://127.0.0.1:$C/classify"
  [segment]="http://127.0.0.1:$S/segment"
  [single]="http://127.0.0.1:$GW/single"
  [composite]="http://127.0.0.1:$GW/vision"
)
# The composite answer holds the three parts, whole.
answer=$(curl -sS --max-time 5 "${URL[composite]}")
python3 -c '
import json, sys
a = json.loads(sys.argv[1])
assert set(a) == {"detect", "classify", "segment"}, a
assert [len(a[k]["items"]) for k in ("detect", "classify", "segment")] == [4, 10, 20], a
' "$answer" || die "the composite route did not answer the three parts: $answer"

declare -A P50 RPS
LAT_TARGETS=(detect classify segment single composite)
LOAD_TARGETS=(single composite)
log "$PROFILE build; $ROUNDS round(s); latency: wrk -t1 -c1 -d$DURATION; load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
for t in composite single; do wrk -t1 -c4 -d1s "${URL[$t]}" >/dev/null; done   # warm-up
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${LAT_TARGETS[@]}")
  (( r % 2 == 0 )) && order=(composite single segment classify detect)
  for t in "${order[@]}"; do
    f="$TMP/lat-$t-$r.log"
    wrk -t1 -c1 -d"$DURATION" --latency "${URL[$t]}" >"$f"
    read -r _ p50 _ bad _ < <(parse_wrk "$f") && (( bad == 0 )) || die "wrk against $t failed: $(cat "$f")"
    P50[$t]+="$p50 "
  done
  order=("${LOAD_TARGETS[@]}")
  (( r % 2 == 0 )) && order=(composite single)
  for t in "${order[@]}"; do
    f="$TMP/load-$t-$r.log"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${URL[$t]}" >"$f"
    read -r rps _ _ bad _ < <(parse_wrk "$f") && (( bad == 0 )) || die "wrk against $t failed: $(cat "$f")"
    RPS[$t]+="$rps "
  done
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
echo
printf '%-10s %12s\n' target "p50 (ms)"
for t in "${LAT_TARGETS[@]}"; do printf '%-10s %12.4f\n' "$t" "$(med "${P50[$t]}")"; done
slowest=$(for t in detect classify segment; do med "${P50[$t]}"; done | sort -g | tail -n 1)
comp=$(med "${P50[composite]}")
single=$(med "${P50[single]}")
echo
awk -v c="$comp" -v s="$slowest" -v g="$single" 'BEGIN {
  printf "added latency over the slowest part (p50): %.1f µs   (goal ≤ 100 µs, release)\n", (c - s) * 1000
  printf "composite − single-upstream route (p50):    %.1f µs   (what the fan-out and merge add)\n", (c - g) * 1000
}'
rs=$(med "${RPS[single]}")
rc=$(med "${RPS[composite]}")
echo
awk -v c="$rc" -v s="$rs" 'BEGIN {
  printf "req/s: composite %.0f, single route %.0f (three separate calls: %.0f answers/s)\n", c, s, s / 3
  printf "composite / three separate calls: %.2f\n", c / (s / 3)
}'
