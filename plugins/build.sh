#!/usr/bin/env bash
# Builds every guest plugin as a WebAssembly component (wasm32-wasip2, release) and copies
# them to plugins/target/components/NAME.wasm.
#
#   plugins/build.sh                     # all plugins
#   plugins/build.sh api-key model-router  # only these
#   JOBS=2 plugins/build.sh              # more build jobs (default 1)
#
# Safe to call from a build script or test harness of another cargo project: the variables
# a parent cargo sets (target dir, target, flags, jobserver) are cleared first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"

# name in target/components  <-  crate directory
plugins=(
    api-key
    jwt
    headers
    model-router
    redact
    hostile/loop-forever
    hostile/grow-memory
    hostile/trap
    hostile/escape
    hostile/stream-probe
    hostile/reach
    oauth2-introspection
)
if (( $# )); then
    plugins=("$@")
fi

unset CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR RUSTFLAGS \
      CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_MAKEFLAGS MAKEFLAGS MFLAGS \
      CARGO_PRIMARY_PACKAGE CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_PKG_NAME \
      RUSTC_WORKSPACE_WRAPPER || true
# The toolchain comes from the repository's rust-toolchain.toml (which lists wasm32-wasip2);
# without rustup, the active rustc must have the target installed.
unset RUSTUP_TOOLCHAIN CARGO RUSTC RUSTDOC || true

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
fi

packages=()
for p in "${plugins[@]}"; do
    packages+=(-p "$(basename "$p")")
done

cargo build --locked -j"${JOBS:-1}" --release --target wasm32-wasip2 "${packages[@]}"

out="$here/target/components"
mkdir -p "$out"
for p in "${plugins[@]}"; do
    name="$(basename "$p")"
    src="$here/target/wasm32-wasip2/release/${name//-/_}.wasm"
    # A component starts with \0asm and version bytes 0d 00 01 00 (a core module: 01 00 00 00).
    if [ "$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')" != "0061736d0d000100" ]; then
        echo "build.sh: $src is not a WebAssembly component" >&2
        exit 1
    fi
    if command -v wasm-tools >/dev/null 2>&1; then
        wasm-tools validate --features all "$src"
    fi
    cp "$src" "$out/$name.wasm.tmp"
    mv "$out/$name.wasm.tmp" "$out/$name.wasm"
    echo "built $out/$name.wasm ($(wc -c <"$out/$name.wasm") bytes)"
done
