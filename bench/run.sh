#!/usr/bin/env bash
# The side-by-side benchmark, from a fresh clone: installs etcd 3.4 (Debian's etcd-server) and
# protoc (protobuf-compiler, for etcd-client's build script) when missing, builds dlockd and the
# benchmark (release), and runs it. Arguments go to dlock-vs-etcd: `bench/run.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

bench/install-deps.sh

cargo build --release -p dlock-server
# Into the root's target/ so that the benchmark finds target/release/dlockd beside itself.
CARGO_TARGET_DIR="$PWD/target" cargo build --release --manifest-path bench/Cargo.toml
exec target/release/dlock-vs-etcd --etcd "$(command -v etcd)" "$@"
