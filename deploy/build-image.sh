#!/usr/bin/env bash
# Builds the dlock container images, FROM scratch around static binaries (nothing is pulled):
#
#   dlock/dlockd:<version>    dlockd and dlockctl (also tagged :latest)
#   dlock/examples:<version>  the example programs the compose file runs as microservices
#                             (scheduler, worker, named_objects; also tagged :latest)
#   dlock/fault-client:<version>  with --with-fault-client only: the client of the container
#                             fault suite (tests/tests/docker_faults.rs)
#
# The binaries are glibc binaries linked with crt-static (docs/dependencies.md §5): they resolve
# service names through the /etc/hosts and /etc/resolv.conf that Docker mounts into every
# container, so peers and clients find each other by compose service name. No CA bundle is
# shipped: nothing in the image speaks TLS to public endpoints.
#
# Usage: deploy/build-image.sh [--with-fault-client]
# Environment:
#   DLOCK_IMAGE_PROFILE  cargo profile of the build (default: image, release without debug info)
#   CARGO_TARGET_DIR     as for cargo (default: target/)
set -euo pipefail

cd "$(dirname "$0")/.."
for tool in docker readelf getconf; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: $tool is not installed" >&2; exit 1; }
done

with_fault_client=false
for arg in "$@"; do
  case $arg in
    --with-fault-client) with_fault_client=true ;;
    *) echo "usage: $0 [--with-fault-client]" >&2; exit 2 ;;
  esac
done

profile=${DLOCK_IMAGE_PROFILE:-image}
host=$(rustc -vV | sed -n 's/^host: //p')
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
target_dir=${CARGO_TARGET_DIR:-target}
case $profile in
  dev) out="$target_dir/$host/debug" ;;
  *) out="$target_dir/$host/$profile" ;;
esac

# A static glibc resolves names without NSS modules (files, then DNS) only since 2.35
# (docs/dependencies.md §5); an older one would build images whose nodes cannot find each other.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || true
if [ -z "$glibc" ]; then
  echo "build-image.sh: this host has no glibc; static binaries are built against glibc (crt-static)" >&2
  exit 1
fi
if [ "$(printf '%s\n2.35\n' "$glibc" | sort -V | head -n1)" != 2.35 ]; then
  echo "build-image.sh: glibc $glibc is older than 2.35: static binaries would not resolve service names" >&2
  exit 1
fi

# --target keeps RUSTFLAGS off build scripts and proc macros, which cannot be crt-static. The
# getrandom backend is pinned to the syscall: looking the libc symbol up fails in a static binary
# and the fallback needs /dev/urandom.
static_build() {
  RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
    cargo build --locked --profile "$profile" --target "$host" "$@"
}
echo "build-image.sh: building static binaries ($profile profile, $host)"
# The server binaries in a cargo run of their own: examples and test programs bring the
# dev-dependencies' features (tokio's test-util, dlock-cluster's simulated network), which
# cargo would otherwise unify into dlockd too.
static_build -p dlock-server --bin dlockd -p dlock-ctl --bin dlockctl
if $with_fault_client; then
  static_build -p dlock-client --example scheduler --example worker --example named_objects \
    -p dlock-tests --bin dlock-fault-client
else
  static_build -p dlock-client --example scheduler --example worker --example named_objects
fi

# The compose cluster's development certificates (deploy/docker-compose.yml), made once: a
# CA, node certificates for node1..3 and client certificates for the health check (ops), the
# example services, the host (app) and the admin API (admin: dlockctl status, list, membership). Keys readable by the containers' user (development only).
if [[ ! -f deploy/certs/ca.pem ]]; then
  "$out/dlockctl" certs init --dir deploy/certs --nodes 3 --clients ops,scheduler,worker,app,admin \
    --readable-keys >/dev/null
  # The CA key stays out of the directory the containers mount.
  mkdir -p deploy/certs-ca
  mv deploy/certs/ca.key deploy/certs-ca/ca.key
  chmod 600 deploy/certs-ca/ca.key
  echo "build-image.sh: made development certificates in deploy/certs (CA key in deploy/certs-ca)"
fi

context=$(mktemp -d)
trap 'rm -rf "$context" "$context.log"' EXIT

# The data directory is created in the image owned by the unprivileged user, so that a fresh
# named volume mounted there inherits that owner.
build() { # build NAME DOCKERFILE BINARY...
  local name=$1 dockerfile=$2; shift 2
  rm -rf "${context:?}"/*
  mkdir -p "$context/data"
  for binary in "$@"; do
    cp "$binary" "$context/"
    headers=$(readelf --program-headers "$binary")
    case $headers in
      *INTERP*)
        echo "build-image.sh: $binary is dynamically linked; a FROM scratch image cannot run it" >&2
        exit 1 ;;
    esac
  done
  printf '%s' "$dockerfile" > "$context/Dockerfile"
  # The legacy builder warns that it is deprecated on every run: show its output only if it fails.
  if ! docker build --quiet -t "$name:$version" -t "$name:latest" "$context" >"$context.log" 2>&1; then
    cat "$context.log" >&2
    exit 1
  fi
  echo "build-image.sh: built $name:$version ($(docker image inspect -f '{{.Size}}' "$name:$version" | awk '{printf "%.1f MB", $1/1e6}'))"
}

build dlock/dlockd '
FROM scratch
COPY --chown=65532:65532 data /data
COPY dlockd dlockctl /
USER 65532:65532
ENV DLOCKD_DATA_DIR=/data DLOCKD_CLIENT_ADDR=0.0.0.0:7700 DLOCKD_PEER_ADDR=0.0.0.0:7701
VOLUME /data
EXPOSE 7700 7701
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/dlockctl", "--endpoint", "127.0.0.1:7700", "--timeout-ms", "1000", "health"]
ENTRYPOINT ["/dlockd"]
' "$out/dlockd" "$out/dlockctl"

build dlock/examples '
FROM scratch
COPY scheduler worker named_objects /
USER 65532:65532
ENTRYPOINT ["/worker"]
' "$out/examples/scheduler" "$out/examples/worker" "$out/examples/named_objects"

if $with_fault_client; then
  build dlock/fault-client '
FROM scratch
COPY dlock-fault-client /
USER 65532:65532
ENTRYPOINT ["/dlock-fault-client"]
' "$out/dlock-fault-client"
fi
