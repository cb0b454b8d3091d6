#!/usr/bin/env bash
# Builds the non-Rust example plugins as WebAssembly components:
#
#   plugins/python/api-key         (componentize-py)  ->  plugins/target/components/python-api-key.wasm
#   plugins/python/hmac-signature  (componentize-py)  ->  plugins/target/components/python-hmac-signature.wasm
#   plugins/python/vision-merge    (componentize-py)  ->  plugins/target/components/python-vision-merge.wasm
#   plugins/python/stop-words      (componentize-py)  ->  plugins/target/components/python-stop-words.wasm
#   plugins/python/rate-limit      (componentize-py)  ->  plugins/target/components/python-rate-limit.wasm
#   plugins/js/bearer              (componentize-js)  ->  plugins/target/components/js-bearer.wasm
#   plugins/c/api-key              (clang, wasi-libc) ->  plugins/target/components/c-api-key.wasm
#
#   bash plugins/build-polyglot.sh            # all
#   bash plugins/build-polyglot.sh python     # only one language (python | js | c)
#   FORCE=1 bash plugins/build-polyglot.sh    # rebuild even when up to date
#
# Installs the pinned toolchains on first use:
#   - componentize-py from plugins/python/api-key/requirements.txt into a venv at
#     plugins/target/venv (needs python3 >= 3.10 with the venv module, and network once);
#   - componentize-js and wizer from plugins/js/bearer/package-lock.json with `npm ci`
#     into plugins/js/bearer/node_modules (needs node ^20.19 or >= 22.12 and npm, network once);
#   - for C: wasm-tools (plugins/c/requirements.txt) into the same venv, and wit-bindgen's
#     CLI (C generator only, version $WIT_BINDGEN_VERSION) with `cargo install` into
#     $WIT_BINDGEN_ROOT (default plugins/target/tools; .ci/run sets ~/.cargo so that the
#     machine keeps it across fresh clones): about 10 CPU-minutes of compiling, once. A
#     wit-bindgen of that version in $WIT_BINDGEN_ROOT/bin or on PATH is used as it is.
#     clang, wasm-ld, wasi-libc and compiler-rt's wasm32 builtins are not installed here:
#     they are Debian packages (.ci/run installs them). The WASI reactor adapter is the one
#     of the gateway's wasmtime, read from the crate `wasi-preview1-component-adapter-provider`
#     that Cargo.lock pins (found with `cargo metadata`).
# A component is rebuilt only when it is missing or older than one of its inputs (its
# sources, the lock file, wit/); a second run with nothing changed takes about a second.
#
# Exit status: 0 when built (or up to date); 2 when a toolchain cannot be found or installed
# (no python3/node/clang, no network): the message says which; 1 on any other failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"
root="$(cd .. && pwd)"
wit="$root/wit"
out="$here/target/components"
mkdir -p "$out"

want="${1:-all}"
case "$want" in all|python|js|c) ;; *) echo "usage: $0 [all|python|js|c]" >&2; exit 1 ;; esac

# The wit-bindgen CLI for C bindings: the release of the wit-bindgen crate the Rust plugins use.
WIT_BINDGEN_VERSION=0.63.0
C_PACKAGES="Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32 (the libclang-rt that matches clang's version)"
venv="$here/target/venv"
tools="${WIT_BINDGEN_ROOT:-$here/target/tools}"

toolchain_missing() {
    echo "build-polyglot.sh: toolchain unavailable: $*" >&2
    exit 2
}

# True when $1 is missing or older than any file under the remaining paths.
stale() {
    local target="$1"; shift
    [ "${FORCE:-0}" = 1 ] && return 0
    [ -f "$target" ] || return 0
    [ -n "$(find "$@" -type f -newer "$target" -not -path '*/__pycache__/*' -print -quit 2>/dev/null)" ]
}

is_component() {
    # A component starts with \0asm and version bytes 0d 00 01 00 (a core module: 01 00 00 00).
    [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "0061736d0d000100" ] || {
        echo "build-polyglot.sh: $1 is not a WebAssembly component" >&2
        exit 1
    }
    local wasm_tools
    wasm_tools="$(command -v wasm-tools 2>/dev/null || echo "$venv/bin/wasm-tools")"
    if [ -x "$wasm_tools" ]; then
        "$wasm_tools" validate --features all "$1"
    fi
}

# Installs the pinned requirements file $1 into the venv (made on first use), unless its
# stamp $2 is newer.
venv_install() {
    local requirements="$1" stamp="$2"
    stale "$stamp" "$requirements" || return 0
    command -v python3 >/dev/null 2>&1 || toolchain_missing "python3 not found"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" || toolchain_missing "python3 -m venv failed (install python3-venv)"
    fi
    echo "build-polyglot.sh: installing $requirements (pinned) into $venv" >&2
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$requirements" \
        || toolchain_missing "pip install -r $requirements failed (network?)"
    touch "$stamp"
}

# plugins/python/NAME -> python-NAME.wasm for WIT world $2, with the componentize-py of the venv.
build_python_plugin() {
    local src="$here/python/$1"
    local world="${2:-auth}"
    local dst="$out/python-$1.wasm"
    local stamp="$venv/.requirements.stamp"
    if stale "$dst" "$src/app.py" "$here/python/api-key/requirements.txt" "$wit" "$stamp"; then
        echo "build-polyglot.sh: building $dst" >&2
        local tmp="$dst.tmp.$$"
        (cd "$src" && PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" \
            -d "$wit" -w "$world" componentize app -o "$tmp")
        is_component "$tmp"
        mv -f "$tmp" "$dst"
    fi
}

build_python() {
    venv_install "$here/python/api-key/requirements.txt" "$venv/.requirements.stamp"
    build_python_plugin api-key auth
    build_python_plugin hmac-signature auth
    build_python_plugin vision-merge transform
    build_python_plugin stop-words stream-transform
    build_python_plugin rate-limit auth-with-capabilities
}

build_js() {
    local src="$here/js/bearer"
    local dst="$out/js-bearer.wasm"
    local stamp="$src/node_modules/.portcullis.stamp"
    if stale "$stamp" "$src/package.json" "$src/package-lock.json"; then
        command -v node >/dev/null 2>&1 || toolchain_missing "node not found"
        command -v npm >/dev/null 2>&1 || toolchain_missing "npm not found"
        # componentize-js 0.23 and its dependencies need node ^20.19 or >= 22.12.
        node -e 'const [a,b]=process.versions.node.split(".").map(Number);
                 process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)' \
            || toolchain_missing "node $(node --version) is too old: componentize-js needs ^20.19 or >= 22.12"
        echo "build-polyglot.sh: installing componentize-js (pinned, npm ci) in $src" >&2
        (cd "$src" && npm ci --no-audit --no-fund --loglevel=error) \
            || toolchain_missing "npm ci in $src failed (network?)"
        touch "$stamp"
    fi
    if stale "$dst" "$src/bearer.js" "$src/package-lock.json" "$wit" "$stamp"; then
        echo "build-polyglot.sh: building $dst" >&2
        local tmp="$dst.tmp.$$.wasm"
        # componentize-js reads the WIT from inside its own WASI sandbox, which sees only the
        # current directory's tree: pass paths relative to $src, not absolute ones.
        # -d http -d fetch-event: no wasi:http imports, which the sandboxed host does not link.
        (cd "$src" && ./node_modules/.bin/componentize-js --wit ../../../wit --world-name auth \
            -d http -d fetch-event -o "../../target/components/$(basename "$tmp")" bearer.js)
        is_component "$tmp"
        mv -f "$tmp" "$dst"
    fi
}

# The WASI preview1 reactor adapter of the wasmtime release in the gateway's Cargo.lock,
# from the crate `wasi-preview1-component-adapter-provider` (cargo metadata fetches it).
reactor_adapter() {
    local manifest
    manifest="$(cd "$root" && cargo metadata --locked --format-version 1 \
        | grep -o '"manifest_path":"[^"]*/wasi-preview1-component-adapter-provider-[^"/]*/Cargo.toml"' \
        | head -n 1)" || toolchain_missing "cargo metadata failed (network?)"
    manifest="${manifest#\"manifest_path\":\"}"
    local adapter="${manifest%/Cargo.toml\"}/artefacts/wasi_snapshot_preview1.reactor.wasm"
    [ -f "$adapter" ] || { echo "build-polyglot.sh: no reactor adapter at $adapter" >&2; exit 1; }
    echo "$adapter"
}

# Prints the path of a wit-bindgen CLI of version $WIT_BINDGEN_VERSION, installing it into
# $tools when there is none.
wit_bindgen_path() {
    local candidate
    for candidate in "$tools/bin/wit-bindgen" "$(command -v wit-bindgen 2>/dev/null)"; do
        if [ -x "$candidate" ] \
            && [ "$("$candidate" --version 2>/dev/null)" = "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]; then
            echo "$candidate"
            return
        fi
    done
    command -v cargo >/dev/null 2>&1 || toolchain_missing "cargo not found (it installs wit-bindgen-cli)"
    echo "build-polyglot.sh: installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C generator) into $tools" >&2
    # Not into a parent cargo's target dir, nor with its flags (this may run under cargo test).
    (unset CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR RUSTFLAGS \
           CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_MAKEFLAGS MAKEFLAGS MFLAGS \
           RUSTUP_TOOLCHAIN CARGO RUSTC RUSTDOC
     cargo install --quiet --locked wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" \
         --no-default-features --features c --root "$tools" >&2) \
        || toolchain_missing "cargo install wit-bindgen-cli $WIT_BINDGEN_VERSION failed (network?)"
    echo "$tools/bin/wit-bindgen"
}

build_c() {
    local src="$here/c/api-key"
    local dst="$out/c-api-key.wasm"
    local build="$here/target/c/api-key"
    venv_install "$here/c/requirements.txt" "$venv/.c-requirements.stamp"
    local wit_bindgen
    wit_bindgen="$(wit_bindgen_path)"
    local adapter
    adapter="$(reactor_adapter)"
    if stale "$dst" "$src" "$wit" "$wit_bindgen" "$adapter" "$venv/.c-requirements.stamp"; then
        command -v clang >/dev/null 2>&1 || toolchain_missing "clang not found ($C_PACKAGES)"
        command -v wasm-ld >/dev/null 2>&1 || toolchain_missing "wasm-ld not found ($C_PACKAGES)"
        mkdir -p "$build"
        printf 'int f(void) { return 0; }\n' \
            | clang --target=wasm32-wasi -mexec-model=reactor -x c -o "$build/probe.wasm" - \
            || toolchain_missing "clang cannot link a wasm32-wasi reactor: wasi-libc or compiler-rt's wasm32 builtins are missing ($C_PACKAGES)"
        echo "build-polyglot.sh: building $dst" >&2
        local tmp="$dst.tmp.$$"
        WIT="$wit" BUILD_DIR="$build" ADAPTER="$adapter" WIT_BINDGEN="$wit_bindgen" \
            WASM_TOOLS="$venv/bin/wasm-tools" bash "$src/build.sh" "$tmp" >/dev/null
        is_component "$tmp"
        mv -f "$tmp" "$dst"
    fi
    # The tools as a C author has them, on PATH: the scaffold test puts this folder there.
    mkdir -p "$here/target/c/bin"
    ln -sf "$wit_bindgen" "$here/target/c/bin/wit-bindgen"
    ln -sf "$venv/bin/wasm-tools" "$here/target/c/bin/wasm-tools"
}

case "$want" in
    all) build_python; build_js; build_c ;;
    python) build_python ;;
    js) build_js ;;
    c) build_c ;;
esac
