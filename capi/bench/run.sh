#!/usr/bin/env bash
# The uncontended lock+unlock pair from Rust (dlock::win32, dlock-bench pair), C (libdlock,
# capi/bench/pair.c) and Python (the dlock package, capi/bench/pair.py), in one run against one
# release dlockd on this machine. Prints numbers; asserts nothing about speed.
#
# Usage: capi/bench/run.sh [N]   (N timed pairs per language, default 2000)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000}

cargo build --release -q -p dlock-server --bin dlockd -p dlock-ctl --bin dlockctl \
  -p dlock-tests --bin dlock-bench
cargo build --release -q -p dlock-capi   # on its own: --bin filters would leave its library out
work=$(mktemp -d)
trap 'kill "$dlockd" 2>/dev/null || true; wait "$dlockd" 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
peer=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/release/dlockd --data-dir "$work/data" --client-addr "127.0.0.1:$port" \
  --peer-addr "127.0.0.1:$peer" >"$work/dlockd.log" 2>&1 &
dlockd=$!
export DLOCK_ENDPOINTS="127.0.0.1:$port"
for _ in $(seq 100); do
  target/release/dlockctl --timeout-ms 500 health >/dev/null 2>&1 && break
  sleep 0.1
done

cc -O2 -I capi/include/compat capi/bench/pair.c -L target/release -ldlock \
  -Wl,-rpath,"$PWD/target/release" -o "$work/pair"
python3 -m venv "$work/venv"
DLOCK_LIBRARY="$PWD/target/release/libdlock.so" "$work/venv/bin/pip" install -q ./python

echo "uncontended WaitForSingleObject + ReleaseMutex, one release dlockd on 127.0.0.1:$port:"
target/release/dlock-bench pair "$n" | sed 's/^pair:/pair (Rust):/'
"$work/pair" "$n"
"$work/venv/bin/python" capi/bench/pair.py "$n"
