#!/usr/bin/env bash
# bench/sse.sh — SSE relay benchmark: events/s and added latency per event of an
# OpenAI-shaped chat completion stream, through Portcullis with usage accounting on, with
# it off, directly, and through nginx (proxy_buffering off), in one run, with same-run
# ratios. Not a test: it prints numbers; the goals it names are for the release build.
#
# Targets (all on 127.0.0.1, ports picked free at run time):
#   direct  the stream server itself (bench/sse_bench.rs `serve`)
#   nginx   nginx reverse proxy, proxy_buffering off, HTTP/1.1 keep-alive upstream
#   off     Portcullis, a plain route (no [routes.ai])
#   on      Portcullis, [routes.ai]; the client asks for usage itself (usage observed
#           as the bytes pass)
#   inject  Portcullis, [routes.ai]; the client does not ask, so the gateway adds
#           stream_options.include_usage and strips the usage chunk back out (events
#           passed on whole)
# Per round and target: a throughput run (STREAMS concurrent streams of EVENTS events,
# 64 events per upstream write, no pauses) and a latency run (one stream of LAT_EVENTS
# events, one per write, 1 ms apart; latency = arrival − the wall-clock stamp the server
# wrote into the event). Medians over rounds; rounds alternate the target order.
#
# PIN=1 puts the proxies (Portcullis, nginx) on CPU 0 and the stream server and client on
# CPU 1: the gateway's CPU per event is then steadier (it reads larger pieces), but on a
# 2-core machine events/s is bound by the load's core (off/direct ~1.0) and the wake-ups
# across cores add ~90 µs to every proxy's latency; the default (0) lets them all float.
#
# Usage:
#   bash bench/sse.sh                                   # release build (built if missing)
#   PROFILE=debug ROUNDS=1 bash bench/sse.sh            # smoke run on the dev build
# Env knobs:
#   ROUNDS [3]  STREAMS [4]  EVENTS [50000]  LAT_EVENTS [3000]
#   PIN [0]  PROFILE [release]  (binaries: target/$PROFILE/portcullis, target/$PROFILE/examples/sse-bench)
# Goals (issue 14): on − direct ≤ 50 µs p99 per event; on/off events/s ≥ 0.95. Also printed:
# each gateway's CPU per event in the throughput runs (/proc schedstat, all threads), on/off.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-4}
EVENTS=${EVENTS:-50000}
LAT_EVENTS=${LAT_EVENTS:-3000}
PROFILE=${PROFILE:-release}
PIN=${PIN:-0}

BENCH_NAME=sse.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in ROUNDS STREAMS EVENTS LAT_EVENTS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ $PIN == 0 || $PIN == 1 ]] || die "PIN must be 0 or 1"
# PROXY / LOAD: the command prefixes that place the proxies and the load (see PIN above).
PROXY=(); LOAD=()
if [[ $PIN == 1 ]]; then PROXY=(taskset -c 0); LOAD=(taskset -c 1); fi
BIN=target/$PROFILE/portcullis
BENCH=target/$PROFILE/examples/sse-bench
build_sse_bench "$BIN" "$BENCH"
need_apt nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

bench_tmp portcullis-sse-bench
read -r UP NGX OFF ON < <(free_ports 4)

"${LOAD[@]}" "$BENCH" serve "$UP" >"$TMP/upstream.log" 2>&1 &
PIDS+=("$!"); wait_port "$UP" "$!" "$TMP/upstream.log"

cat >"$TMP/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
$(nginx_temp_paths proxy)
    upstream up { server 127.0.0.1:$UP; keepalive 16; }
    server {
        listen 127.0.0.1:$NGX;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGX
"${PROXY[@]}" "$NGINX" -p "$TMP/" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
PIDS+=("$!"); wait_port "$NGX" "$!" "$TMP/nginx-error.log"

gateway() { # NAME PORT AI(0|1)
  local ai=""
  [[ $3 == 1 ]] && ai=$'\n[routes.ai]\n'
  cat >"$TMP/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
workers = 1

[[upstreams]]
name = "up"
targets = [{ address = "127.0.0.1:$UP" }]

[[routes]]
name = "chat"
path_prefix = "/v1"
upstream = "up"
$ai
TOML
  "${PROXY[@]}" "$BIN" run --config "$TMP/$1.toml" --log-level warn >"$TMP/$1.log" 2>&1 &
  PIDS+=("$!"); wait_port "$2" "$!" "$TMP/$1.log"
  GW[$1]=$!
}
declare -A GW
gateway off "$OFF" 0
gateway on "$ON" 1
GW[inject]=${GW[on]}

PATH_=/v1/chat/completions
declare -A URL=([direct]="http://127.0.0.1:$UP$PATH_" [nginx]="http://127.0.0.1:$NGX$PATH_"
  [off]="http://127.0.0.1:$OFF$PATH_" [on]="http://127.0.0.1:$ON$PATH_" [inject]="http://127.0.0.1:$ON$PATH_")
declare -A ASK=([direct]=ask [nginx]=ask [off]=ask [on]=ask [inject]="")
TARGETS=(direct nginx off on inject)
log "$PROFILE build; $ROUNDS round(s); pinned: $PIN; throughput: $STREAMS streams x $EVENTS events; latency: $LAT_EVENTS events, 1 ms apart"

declare -A TPUT P50 P99 P999 NSEV
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${TARGETS[@]}")
  if (( r % 2 == 0 )); then order=(); for ((k = ${#TARGETS[@]} - 1; k >= 0; k--)); do order+=("${TARGETS[$k]}"); done; fi
  for t in "${order[@]}"; do
    before=$([[ -n ${GW[$t]:-} ]] && cpu_ns "${GW[$t]}" || echo 0)
    read -r _ eps < <("${LOAD[@]}" "$BENCH" run "${URL[$t]}" throughput "$STREAMS" "$EVENTS" ${ASK[$t]})
    # The gateway's CPU per event of the throughput run (gateways only).
    nsev=$([[ -n ${GW[$t]:-} ]] && echo $(( ($(cpu_ns "${GW[$t]}") - before) / (STREAMS * EVENTS) )) || echo 0)
    read -r _ p50 p99 p999 < <("${LOAD[@]}" "$BENCH" run "${URL[$t]}" latency 1 "$LAT_EVENTS" ${ASK[$t]})
    TPUT[$t]+="$eps "; P50[$t]+="$p50 "; P99[$t]+="$p99 "; P999[$t]+="$p999 "; NSEV[$t]+="$nsev "
    printf '    round %d %-7s %12.0f events/s  %5d ns CPU/event   latency p50 %8.1f us  p99 %8.1f us  p99.9 %8.1f us\n' "$r" "$t" "$eps" "$nsev" "$p50" "$p99" "$p999"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A M_T M_50 M_99 M_999 M_NS
echo
printf '%-8s %14s %14s %12s %12s %12s\n' target "events/s" "CPU ns/event" "p50 us" "p99 us" "p99.9 us"
for t in "${TARGETS[@]}"; do
  M_T[$t]=$(median <<<"${TPUT[$t]}"); M_50[$t]=$(median <<<"${P50[$t]}")
  M_99[$t]=$(median <<<"${P99[$t]}"); M_999[$t]=$(median <<<"${P999[$t]}"); M_NS[$t]=$(median <<<"${NSEV[$t]}")
  printf '%-8s %14.0f %14.0f %12.1f %12.1f %12.1f\n' "$t" "${M_T[$t]}" "${M_NS[$t]}" "${M_50[$t]}" "${M_99[$t]}" "${M_999[$t]}"
done
echo
awk -v onns="${M_NS[on]}" -v offns="${M_NS[off]}" -v injns="${M_NS[inject]}" -v on="${M_T[on]}" -v inj="${M_T[inject]}" -v off="${M_T[off]}" -v ngx="${M_T[nginx]}" -v dir="${M_T[direct]}" \
    -v on99="${M_99[on]}" -v inj99="${M_99[inject]}" -v off99="${M_99[off]}" -v ngx99="${M_99[nginx]}" -v dir99="${M_99[direct]}" 'BEGIN {
  printf "gateway CPU per event   on/off %.3f   inject/off %.3f   (the gateway process alone; events/s also moves with the client and upstream on the same cores)\n", onns / offns, injns / offns
  printf "events/s   on/off %.3f   inject/off %.3f   off/direct %.3f   on/nginx %.3f   (goal: on/off >= 0.95)\n", on / off, inj / off, off / dir, on / ngx
  printf "added p99  on %+.1f us   inject %+.1f us   off %+.1f us   nginx %+.1f us   per event, vs direct (goal: on <= 50 us)\n", on99 - dir99, inj99 - dir99, off99 - dir99, ngx99 - dir99
}'
