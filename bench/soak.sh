#!/usr/bin/env bash
# bench/soak.sh — soak test: the gateway under mixed, hostile traffic and hot reloads for
# a long time, its resident memory and open descriptors sampled as it goes.
#
# Not part of `cargo test` (nor of `--include-ignored`): run it by hand or in a nightly job.
#
# What it does (everything on 127.0.0.1, every port picked free at run time):
#   1. starts a private nginx as the upstream (a small body at /, a 4 MiB one at /big);
#   2. starts the gateway in front of it with watch_config = true and an admin listener;
#   3. for SOAK_MINUTES runs, all at once:
#        - wrk, keep-alive load (CONNECTIONS connections);
#        - HTTP/2 clients: curl --http2-prior-knowledge, several multiplexed requests per
#          connection, in a loop;
#        - slow clients: heads sent a few bytes at a time, bodies read a few bytes at a time;
#        - clients that reset (RST) mid-request body and mid-response body;
#        - a hot reload every RELOAD_EVERY seconds: the config file is rewritten (a route
#          added or removed, a limit changed) and the gateway reloads it;
#   4. every SAMPLE_EVERY seconds prints a row: elapsed time, the gateway's VmRSS
#      (/proc/PID/status), its open descriptors (/proc/PID/fd), its threads, and the
#      reloads done;
#   5. stops the traffic, waits for idle connections to be closed (keep_alive_timeout is
#      5s here) and samples once more, then prints a verdict.
#
# Verdict: RSS is "growing" when the mean of the last third of the samples is more than
# 10% and 4 MiB above the mean of the first third (the first sample, taken before any
# traffic, is left out); descriptors are "growing" when, after the traffic stopped and
# idle connections closed, more are open than before the traffic (+8 for the upstream
# pool's idle connections and the like). Exit status 0 when both are flat, 1 otherwise.
#
# Usage (from anywhere):
#   bash bench/soak.sh                          # 30 minutes
#   SOAK_MINUTES=3 bash bench/soak.sh           # a short check
#
# Env knobs:
#   SOAK_MINUTES    how long the traffic runs                          [30]
#   SAMPLE_EVERY    seconds between samples                            [30; 10 under 10 minutes]
#   RELOAD_EVERY    seconds between config rewrites                    [5]
#   CONNECTIONS     wrk keep-alive connections                         [16]
#   PORTCULLIS_BIN  the gateway binary   [target/release/portcullis, else target/debug/portcullis]
# Logs and the generated configs go to bench/out/soak-<stamp>/.
set -euo pipefail

SOAK_MINUTES=${SOAK_MINUTES:-30}
if [ -z "${SAMPLE_EVERY:-}" ]; then
    if [ "$SOAK_MINUTES" -lt 10 ]; then SAMPLE_EVERY=10; else SAMPLE_EVERY=30; fi
fi
RELOAD_EVERY=${RELOAD_EVERY:-5}
CONNECTIONS=${CONNECTIONS:-16}

BENCH_NAME=soak.sh
BENCH_DIE_STATUS=2   # 1 is the verdict "growing"
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -n "${PORTCULLIS_BIN:-}" ]; then BIN=$PORTCULLIS_BIN
elif [ -x target/release/portcullis ]; then BIN=target/release/portcullis
else BIN=target/debug/portcullis; fi
[ -x "$BIN" ] || die "no gateway binary at $BIN (cargo build, or set PORTCULLIS_BIN)"
for tool in wrk nginx curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

OUT=bench/out/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

bench_cleanup_hook() {
    [ -f "$OUT/nginx/nginx.pid" ] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null
    wait 2>/dev/null
}
read -r UP_PORT GW_PORT ADMIN_PORT < <(free_ports 3)
GW=127.0.0.1:$GW_PORT

# 1. The upstream.
mkdir -p "$OUT/nginx/html"
echo hello > "$OUT/nginx/html/index.html"
head -c $((4 << 20)) /dev/zero | tr '\0' 'x' > "$OUT/nginx/html/big"
cat > "$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT;
        root $OUT/nginx/html;
        location = / { try_files /index.html =404; }
        location = /echo { client_max_body_size 10m; return 200 "ok\n"; }
    }
}
EOF
nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" || die "nginx did not start"

# 2. The gateway. Two configs it is switched between; the file is rewritten in place.
write_config() { # $1 = 0 or 1
    local extra=""
    if [ "$1" = 1 ]; then
        extra=$'[[routes]]\nname = "extra"\npath_prefix = "/extra/"\nupstream = "up"\n'
    fi
    cat > "$OUT/portcullis.toml.tmp" <<EOF
[server]
listen = "$GW"
admin_listen = "127.0.0.1:$ADMIN_PORT"
watch_config = true
keep_alive_timeout = "5s"
header_read_timeout = "5s"
first_byte_timeout = "5s"
max_body_size = "$((1 + $1))MiB"

[[upstreams]]
name = "up"
targets = [{ address = "127.0.0.1:$UP_PORT" }]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"

$extra
EOF
    mv "$OUT/portcullis.toml.tmp" "$OUT/portcullis.toml"
}
write_config 0
"$BIN" run --config "$OUT/portcullis.toml" --log-level warn >"$OUT/gateway.out" 2>"$OUT/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 100); do
    grep -q "listening on" "$OUT/gateway.out" 2>/dev/null && break
    sleep 0.1
done
grep -q "listening on" "$OUT/gateway.out" || die "the gateway did not start (see $OUT/gateway.log)"
curl -sf "http://$GW/" >/dev/null || die "no answer through the gateway"

reloads() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^portcullis_config_reloads_total\{result="success"\}/ {print $2; f=1} END {if (!f) print 0}'
}
sample() { # elapsed label
    local rss fds threads
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status")
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$GW_PID/status")
    fds=$(ls "/proc/$GW_PID/fd" | wc -l)
    printf '%8s %10s %6s %8s %8s\n' "$1" "$rss" "$fds" "$threads" "$(reloads)"
    echo "$1 $rss $fds" >> "$OUT/samples"
}

log "gateway $BIN (pid $GW_PID) on $GW, upstream nginx on 127.0.0.1:$UP_PORT; ${SOAK_MINUTES} min, a sample every ${SAMPLE_EVERY}s; output in $OUT"
printf '%8s %10s %6s %8s %8s\n' elapsed rss_kib fds threads reloads
: > "$OUT/samples"
sample before

# 3. The traffic, each kind a background process that stops by itself at END.
SECONDS_TOTAL=$((SOAK_MINUTES * 60))
END=$(( $(date +%s) + SECONDS_TOTAL ))

wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_TOTAL}s" "http://$GW/" > "$OUT/wrk.txt" 2>&1 &
PIDS+=($!)

( # HTTP/2: a few multiplexed requests per connection, connection after connection.
    while [ "$(date +%s)" -lt "$END" ]; do
        curl -s --http2-prior-knowledge --parallel --parallel-immediate \
            -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
            "http://$GW/" "http://$GW/" "http://$GW/big" "http://$GW/extra/x" \
            >/dev/null 2>&1 || true
    done
) &
PIDS+=($!)

python3 - "$GW_PORT" "$END" > "$OUT/clients.log" 2>&1 <<'PY' &
# Slow clients and clients that reset mid-request and mid-response, a few threads each.
import socket, struct, sys, threading, time
port, end = int(sys.argv[1]), float(sys.argv[2])
counts = {"slow": 0, "reset_request": 0, "reset_response": 0, "errors": 0}

def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s

def rst(s):
    # SO_LINGER 0: close() sends RST instead of FIN.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()

def slow():
    head = b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    s = conn()
    for i in range(0, len(head), 4):
        s.sendall(head[i:i + 4]); time.sleep(0.05)
    while s.recv(16):
        time.sleep(0.01)
    s.close()
    counts["slow"] += 1

def reset_request():
    s = conn()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
    time.sleep(0.02)
    rst(s)
    counts["reset_request"] += 1

def reset_response():
    s = conn()
    s.sendall(b"GET /big HTTP/1.1\r\nHost: soak\r\n\r\n")
    s.recv(65536)
    rst(s)
    counts["reset_response"] += 1

def loop(f):
    while time.time() < end:
        try:
            f()
        except OSError:
            counts["errors"] += 1
            time.sleep(0.1)

threads = [threading.Thread(target=loop, args=(f,)) for f in (slow, slow, slow, slow, reset_request, reset_request, reset_response, reset_response)]
for t in threads: t.start()
for t in threads: t.join()
print(counts)
PY
PIDS+=($!)

( # Hot reloads.
    n=0
    while [ "$(date +%s)" -lt "$END" ]; do
        sleep "$RELOAD_EVERY"
        n=$((1 - n))
        write_config "$n"
    done
) &
PIDS+=($!)

# 4. Samples until the end.
START=$(date +%s)
while [ "$(date +%s)" -lt "$END" ]; do
    sleep "$SAMPLE_EVERY"
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited (see $OUT/gateway.log)"
    sample "$(( $(date +%s) - START ))s"
done

# 5. Traffic stops; idle connections close after keep_alive_timeout.
wait "${PIDS[@]:1}" 2>/dev/null || true
sleep 8
kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited (see $OUT/gateway.log)"
sample after

echo
grep -E "Requests/sec|requests in|Socket errors|Non-2xx" "$OUT/wrk.txt" | sed 's/^/wrk: /' || true
echo "clients: $(tail -1 "$OUT/clients.log")"
echo "config reloads: $(reloads) (log lines with 'reload failed': $(grep -c 'reload failed' "$OUT/gateway.log" || true))"

python3 - "$OUT/samples" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
before, during, after = rows[0], rows[1:-1], rows[-1]
rss = [int(r[1]) for r in during]
third = max(1, len(rss) // 3)
first, last = sum(rss[:third]) / third, sum(rss[-third:]) / third
rss_growing = last > first * 1.10 and last - first > 4096
fd_before, fd_after = int(before[2]), int(after[2])
fd_growing = fd_after > fd_before + 8
print(f"RSS  KiB: before traffic {before[1]}, first {rss[0]}, last {rss[-1]}, max {max(rss)}; "
      f"mean of first third {first:.0f}, of last third {last:.0f}: {'GROWING' if rss_growing else 'flat'}")
print(f"fds:      before traffic {fd_before}, max during {max(int(r[2]) for r in during)}, "
      f"after traffic and idle close {fd_after}: {'GROWING' if fd_growing else 'flat'}")
verdict = "GROWING" if rss_growing or fd_growing else "flat"
print(f"verdict: {verdict}")
sys.exit(1 if verdict != "flat" else 0)
PY
