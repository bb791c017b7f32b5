#!/usr/bin/env bash
# What the side-by-side benchmark needs beyond the README's: etcd 3.4 (Debian's etcd-server) and
# protoc (protobuf-compiler, which etcd-client's build script runs), from Debian's packages, when
# missing. Used by bench/run.sh and .ci/run.
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing ${missing[*]} from Debian's packages" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
