#!/usr/bin/env bash
# Builds the non-Rust example plugins as WebAssembly components:
#
#   plugins/python/api-key  (componentize-py)  ->  plugins/target/components/python-api-key.wasm
#   plugins/js/bearer       (componentize-js)  ->  plugins/target/components/js-bearer.wasm
#
#   bash plugins/build-polyglot.sh            # both
#   bash plugins/build-polyglot.sh python     # only one language (python | js)
#   FORCE=1 bash plugins/build-polyglot.sh    # rebuild even when up to date
#
# Installs the pinned toolchains on first use:
#   - componentize-py from plugins/python/api-key/requirements.txt into a venv at
#     plugins/target/venv (needs python3 >= 3.10 with the venv module, and network once);
#   - componentize-js and wizer from plugins/js/bearer/package-lock.json with `npm ci`
#     into plugins/js/bearer/node_modules (needs node ^20.19 or >= 22.12 and npm, network once).
# A component is rebuilt only when it is missing or older than one of its inputs (its
# sources, the lock file, wit/); a second run with nothing changed takes well under a second.
#
# Exit status: 0 when built (or up to date); 2 when a toolchain cannot be found or installed
# (no python3/node, no network): the message says which; 1 on any other failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"
root="$(cd .. && pwd)"
wit="$root/wit"
out="$here/target/components"
mkdir -p "$out"

want="${1:-all}"
case "$want" in all|python|js) ;; *) echo "usage: $0 [all|python|js]" >&2; exit 1 ;; esac

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
    if command -v wasm-tools >/dev/null 2>&1; then
        wasm-tools validate --features all "$1"
    fi
}

build_python() {
    local src="$here/python/api-key"
    local dst="$out/python-api-key.wasm"
    local venv="$here/target/venv"
    local stamp="$venv/.requirements.stamp"
    if stale "$stamp" "$src/requirements.txt"; then
        command -v python3 >/dev/null 2>&1 || toolchain_missing "python3 not found"
        if [ ! -x "$venv/bin/python" ]; then
            python3 -m venv "$venv" || toolchain_missing "python3 -m venv failed (install python3-venv)"
        fi
        echo "build-polyglot.sh: installing componentize-py (pinned) into $venv" >&2
        "$venv/bin/pip" install --disable-pip-version-check -q -r "$src/requirements.txt" \
            || toolchain_missing "pip install -r $src/requirements.txt failed (network?)"
        touch "$stamp"
    fi
    if stale "$dst" "$src/app.py" "$src/requirements.txt" "$wit" "$stamp"; then
        echo "build-polyglot.sh: building $dst" >&2
        local tmp="$dst.tmp.$$"
        (cd "$src" && PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" \
            -d "$wit" -w auth componentize app -o "$tmp")
        is_component "$tmp"
        mv -f "$tmp" "$dst"
    fi
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

case "$want" in
    all) build_python; build_js ;;
    python) build_python ;;
    js) build_js ;;
esac
