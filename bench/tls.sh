#!/usr/bin/env bash
# bench/tls.sh — HTTPS load check: Portcullis terminating TLS, next to its own plain
# listener and to nginx terminating TLS, all in front of one nginx upstream (fixed 200
# body), on 127.0.0.1 with ports picked at run time.
#
# wrk keeps its connections alive, so this measures TLS record overhead on HTTP/1.1
# (handshakes are amortized; wrk does not speak h2). A self-signed P-256 certificate is
# made with openssl for the run. Prints req/s per target per round.
#
# Usage: bash bench/tls.sh [PORTCULLIS_BIN]      (default target/release/portcullis)
# Env:   DURATION (wrk -d, default 5s), ROUNDS (default 2), CONNECTIONS (default 64)
set -uo pipefail
ARG_BIN=${1:+$(realpath -m "$1")}   # before lib.sh changes to the repository
BENCH_NAME=tls.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${ARG_BIN:-$ROOT/target/release/portcullis}
DUR=${DURATION:-5s}; ROUNDS=${ROUNDS:-2}; CONNS=${CONNECTIONS:-64}
for t in wrk nginx openssl curl python3; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || die "needs $t (apt-get install wrk nginx openssl curl)"
done
[[ -x $BIN ]] || die "no gateway binary at $BIN (cargo build --release)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
bench_tmp portcullis-tls-bench; T=$TMP
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
read -r UP PC PCS NG < <(free_ports 4)
cat >"$T/up.conf" <<C
worker_processes 2; pid $T/up.pid; error_log $T/up-err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
$(nginx_temp_paths up)
  server { listen 127.0.0.1:$UP backlog=4096;
    location / { default_type text/plain; return 200 "hello from upstream\n"; } } }
C
cat >"$T/ng.conf" <<C
worker_processes 2; pid $T/ng.pid; error_log $T/ng-err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
$(nginx_temp_paths ng)
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG ssl backlog=4096;
    ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$T/portcullis.toml" <<C
[server]
listen = ["127.0.0.1:$PC", { address = "127.0.0.1:$PCS", cert = "$T/cert.pem", key = "$T/key.pem" }]
[[upstreams]]
name = "up"
targets = [{ address = "127.0.0.1:$UP" }]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
C
"$NGINX" -p "$T/" -e "$T/up-e.log" -c "$T/up.conf" -g 'daemon off;' & PIDS+=($!)
"$NGINX" -p "$T/" -e "$T/ng-e.log" -c "$T/ng.conf" -g 'daemon off;' & PIDS+=($!)
"$BIN" run --config "$T/portcullis.toml" --log-level warn >"$T/portcullis.out" 2>&1 & PIDS+=($!)
ok=0
for _ in $(seq 100); do
  if curl -sk --max-time 1 "https://127.0.0.1:$PCS/" | grep -q hello && curl -sk --max-time 1 "https://127.0.0.1:$NG/" | grep -q hello; then ok=1; break; fi
  sleep 0.1
done
(( ok )) || { echo "tls.sh: servers did not come up" >&2; cat "$T/portcullis.out" >&2; exit 1; }
for r in $(seq "$ROUNDS"); do
  for t in "portcullis-http http://127.0.0.1:$PC/" "portcullis-https https://127.0.0.1:$PCS/" "nginx-https https://127.0.0.1:$NG/"; do
    set -- $t
    printf 'round %s  %-17s %10s req/s\n' "$r" "$1" "$(wrk -t2 -c"$CONNS" -d"$DUR" "$2" | awk '/Requests\/sec/{print $2}')"
  done
done
