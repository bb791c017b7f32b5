#!/usr/bin/env bash
# A three-node dlockd cluster on this machine, for trying dlock out and for failure drills.
#
#   deploy/local-cluster.sh start   [DIR]   build dlockd + dlockctl if needed, start nodes 1-3
#   deploy/local-cluster.sh stop    [DIR]   stop every node (SIGTERM, then SIGKILL after 10 s)
#   deploy/local-cluster.sh status  [DIR]   processes, then `dlockctl status --all`
#   deploy/local-cluster.sh kill N  [DIR]   SIGKILL node N (a crash)
#   deploy/local-cluster.sh restart N [DIR] stop node N if it runs, start it again
#   deploy/local-cluster.sh env     [DIR]   print the client settings (endpoints, CA, certificate)
#
# Node N (1-3) serves clients on 127.0.0.1:771N and Raft on 127.0.0.1:772N, both with mutual
# TLS: the first start makes a development CA, node certificates and client certificates
# `admin` and `app` in DIR/certs (`dlockctl certs init`). Its data is in DIR/nodeN, its log in
# DIR/nodeN.log, its pid in DIR/nodeN.pid. DIR defaults to ./dlock-cluster. Point clients at
# the cluster with the printed lines:
#
#   eval "$(deploy/local-cluster.sh env)"
#
# Environment: DLOCK_BUILD_PROFILE (release, or debug to use target/debug), RUST_LOG (info),
# DLOCK_PLAINTEXT=1 (no TLS: for comparisons), DLOCKD_TICK_MS and every other DLOCKD_* setting
# of dlockd (passed through).
set -euo pipefail

readonly HOST=127.0.0.1
readonly NODES=(1 2 3)
readonly INITIAL_CLUSTER="1=${HOST}:7721,2=${HOST}:7722,3=${HOST}:7723"
readonly ENDPOINTS="${HOST}:7711,${HOST}:7712,${HOST}:7713"
readonly START_TIMEOUT_S=30
readonly STOP_TIMEOUT_S=10

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly profile="${DLOCK_BUILD_PROFILE:-release}"
readonly target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
readonly dlockd="${target_dir}/${profile}/dlockd"
readonly dlockctl="${target_dir}/${profile}/dlockctl"

usage() {
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

client_port() { echo $((7710 + $1)); }
peer_port() { echo $((7720 + $1)); }

check_node() {
    case "$1" in
        1 | 2 | 3) ;;
        *) die "node must be 1, 2 or 3, not '$1'" ;;
    esac
}

build() {
    local args=(build --manifest-path "${repo_root}/Cargo.toml" -p dlock-server -p dlock-ctl
        --bin dlockd --bin dlockctl)
    if [[ "${profile}" == release ]]; then
        args+=(--release)
    elif [[ "${profile}" != debug ]]; then
        die "DLOCK_BUILD_PROFILE must be release or debug"
    fi
    echo "building dlockd and dlockctl (${profile}; a no-op when up to date)"
    cargo "${args[@]}"
}

# The pid of node $1 if it is running (and really is a dlockd), else nothing.
running_pid() {
    local pidfile="${dir}/node$1.pid" pid
    [[ -f "${pidfile}" ]] || return 0
    pid=$(<"${pidfile}")
    if [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null &&
        tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q dlockd; then
        echo "${pid}"
    fi
}

port_open() {
    (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

# dlockd's TLS flags for node $1 into the array tls (empty with DLOCK_PLAINTEXT=1).
tls_flags() {
    tls=()
    [[ "${DLOCK_PLAINTEXT:-0}" == 1 ]] && return 0
    local certs="${dir}/certs"
    tls=(--cert-file "${certs}/node-$1.pem" --key-file "${certs}/node-$1.key"
        --trusted-ca-file "${certs}/ca.pem" --client-cert-auth
        --peer-cert-file "${certs}/node-$1.pem" --peer-key-file "${certs}/node-$1.key"
        --peer-trusted-ca-file "${certs}/ca.pem")
}

# Makes the development certificates unless DIR/certs has them.
make_certs() {
    [[ "${DLOCK_PLAINTEXT:-0}" == 1 || -f "${dir}/certs/ca.pem" ]] && return 0
    "${dlockctl}" certs init --dir "${dir}/certs" --nodes 3 --clients admin,app >/dev/null
    echo "made a development CA and certificates in ${dir}/certs"
}

# dlockctl as the admin client.
ctl() {
    if [[ "${DLOCK_PLAINTEXT:-0}" == 1 ]]; then
        "${dlockctl}" --endpoint "${ENDPOINTS}" "$@"
    else
        "${dlockctl}" --endpoint "${ENDPOINTS}" --cacert "${dir}/certs/ca.pem" \
            --cert "${dir}/certs/client-admin.pem" --key "${dir}/certs/client-admin.key" "$@"
    fi
}

start_node() {
    local n=$1 pid
    pid=$(running_pid "${n}")
    if [[ -n "${pid}" ]]; then
        echo "node ${n} already running (pid ${pid})"
        return 0
    fi
    [[ -x "${dlockd}" ]] || die "${dlockd} is missing: run '$0 start' to build it"
    mkdir -p "${dir}/node${n}"
    make_certs
    local tls
    tls_flags "${n}"
    RUST_LOG="${RUST_LOG:-info}" nohup "${dlockd}" \
        --node-id "${n}" \
        --data-dir "${dir}/node${n}" \
        --client-addr "${HOST}:$(client_port "${n}")" \
        --peer-addr "${HOST}:$(peer_port "${n}")" \
        --initial-cluster "${INITIAL_CLUSTER}" \
        "${tls[@]}" \
        >>"${dir}/node${n}.log" 2>&1 </dev/null &
    pid=$!
    echo "${pid}" >"${dir}/node${n}.pid"
    echo "node ${n}: pid ${pid}, client ${HOST}:$(client_port "${n}"), peer ${HOST}:$(peer_port "${n}"), log ${dir}/node${n}.log"
}

wait_listening() {
    local n=$1 deadline=$((SECONDS + START_TIMEOUT_S))
    until port_open "$(client_port "${n}")"; do
        [[ -n "$(running_pid "${n}")" ]] ||
            die "node ${n} exited during start-up; see ${dir}/node${n}.log"
        ((SECONDS < deadline)) || die "node ${n} did not listen within ${START_TIMEOUT_S} s"
        sleep 0.1
    done
}

wait_leader() {
    local deadline=$((SECONDS + START_TIMEOUT_S))
    local out
    until out=$(ctl --timeout-ms 2000 status 2>/dev/null) && grep -Eq 'leader [0-9]+ ' <<<"${out}"; do
        ((SECONDS < deadline)) || die "no leader elected within ${START_TIMEOUT_S} s"
        sleep 0.2
    done
}

stop_node() {
    local n=$1 pid deadline
    pid=$(running_pid "${n}")
    if [[ -z "${pid}" ]]; then
        echo "node ${n} is not running"
        rm -f "${dir}/node${n}.pid"
        return 0
    fi
    kill -TERM "${pid}"
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "${pid}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "node ${n} (pid ${pid}) ignored SIGTERM for ${STOP_TIMEOUT_S} s: SIGKILL" >&2
            kill -KILL "${pid}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "${dir}/node${n}.pid"
    echo "node ${n} stopped"
}

print_env() {
    printf 'export DLOCK_ENDPOINTS=%q\n' "${ENDPOINTS}"
    if [[ "${DLOCK_PLAINTEXT:-0}" != 1 ]]; then
        printf 'export DLOCK_CACERT=%q\n' "${dir}/certs/ca.pem"
        printf 'export DLOCK_CERT=%q DLOCK_KEY=%q\n' "${dir}/certs/client-app.pem" \
            "${dir}/certs/client-app.key"
        printf '# admin commands (dlockctl status, list, sessions, membership) need the admin\n'
        printf '# certificate: dlockctl --cert %q --key %q ...\n' \
            "${dir}/certs/client-admin.pem" "${dir}/certs/client-admin.key"
    fi
}

[[ $# -ge 1 ]] || usage
command=$1
shift
node=
case "${command}" in
    kill | restart)
        [[ $# -ge 1 ]] || usage
        node=$1
        shift
        check_node "${node}"
        ;;
    start | stop | status | env) ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
[[ $# -le 1 ]] || usage
dir="${1:-./dlock-cluster}"
mkdir -p "${dir}"
dir=$(cd "${dir}" && pwd)
readonly dir

case "${command}" in
    start)
        build
        for n in "${NODES[@]}"; do
            start_node "${n}"
        done
        for n in "${NODES[@]}"; do
            wait_listening "${n}"
        done
        wait_leader
        ctl status --all
        echo
        echo "cluster running; point clients at it with:"
        print_env
        ;;
    stop)
        for n in "${NODES[@]}"; do
            stop_node "${n}"
        done
        ;;
    status)
        for n in "${NODES[@]}"; do
            pid=$(running_pid "${n}")
            if [[ -n "${pid}" ]]; then
                echo "node ${n}: running, pid ${pid}"
            else
                echo "node ${n}: not running"
            fi
        done
        [[ -x "${dlockctl}" ]] || die "${dlockctl} is missing: run '$0 start' to build it"
        ctl --timeout-ms 3000 status --all
        ;;
    kill)
        pid=$(running_pid "${node}")
        [[ -n "${pid}" ]] || die "node ${node} is not running"
        kill -KILL "${pid}"
        rm -f "${dir}/node${node}.pid"
        echo "node ${node} (pid ${pid}) killed with SIGKILL"
        ;;
    restart)
        stop_node "${node}"
        start_node "${node}"
        wait_listening "${node}"
        echo "node ${node} restarted"
        ;;
    env)
        print_env
        ;;
esac
