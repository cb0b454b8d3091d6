#!/usr/bin/env bash
# bench/websocket.sh — WebSocket echo benchmark: Portcullis vs nginx (not a test).
#
# Runs benches/websocket.rs (built by `cargo bench`, release profile): a tokio-tungstenite
# echo server, a private nginx reverse proxy in front of it (`proxy_http_version 1.1`,
# `proxy_set_header Upgrade $http_upgrade`, `Connection upgrade`, its own prefix in a temp
# dir; the system nginx is never touched) and Portcullis in front of it too. CONNECTIONS
# clients each send a MESSAGE-byte binary message and wait for its echo, for DURATION
# seconds per target, targets interleaved over ROUNDS rounds; it prints round trips per
# second and p99 latency for direct / nginx / portcullis and the ratios portcullis/nginx.
# Everything is on 127.0.0.1 on ports picked at run time; it stops by itself.
#
# Usage (from anywhere):
#   bash bench/websocket.sh
#   DURATION=3 ROUNDS=1 bash bench/websocket.sh        # quick run
#
# Env knobs:
#   DURATION        seconds per measurement                 [10]
#   ROUNDS          rounds of [direct, nginx, portcullis]    [3]
#   CONNECTIONS     concurrent WebSocket clients             [32]
#   MESSAGE         message size in bytes                    [64]
#   PORTCULLIS_BIN  gateway binary  [target/release/portcullis] (built when missing)
#   NGINX           nginx binary    [/usr/sbin/nginx]
#
# On a 2-core machine the clients, the echo server and the proxy share the cores:
# compare the ratios, not the absolute numbers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${PORTCULLIS_BIN:-target/release/portcullis}
if [[ -z "${PORTCULLIS_BIN:-}" && ! -x "$BIN" ]]; then
  cargo build --release --locked
fi
command -v "${NGINX:-/usr/sbin/nginx}" >/dev/null || { echo "websocket.sh: nginx not found (set NGINX)" >&2; exit 1; }
PORTCULLIS_BIN=$(realpath "$BIN") exec cargo bench --locked --bench websocket
