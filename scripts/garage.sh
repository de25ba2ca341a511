#!/usr/bin/env bash
# Garage, a distributed S3-compatible object store, on loopback for the S3
# tests and the benchmark.
#
#   scripts/garage.sh install             build it with cargo unless installed
#   scripts/garage.sh start DIR [NODES]   start NODES (1 or 3) nodes under DIR;
#                                         writes DIR/env (source it) and DIR/pids
#   scripts/garage.sh stop DIR            stop the nodes started under DIR
#
# DIR/env exports TileDB's S3 settings as TILEDB_* variables (TileDB reads
# them into every config) and the key pair as AWS_* variables, so modelfs,
# the tests and TileDB-Py all reach the server without flags. Everything
# binds to 127.0.0.1 only.
set -euo pipefail

GARAGE_VERSION=2.5.0
REGION=garage-test
BUCKET=modelfs-test
# Test-only credentials for a server that lives as long as one test run.
ACCESS_KEY=GK0123456789abcdef01234567
SECRET_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
RPC_SECRET=6d6f64656c667300000000000000000000000000000000000000000000000000

garage_bin() {
    if command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        echo "$HOME/.cargo/bin/garage"
    else
        return 1
    fi
}

install() {
    if garage_bin >/dev/null; then
        return
    fi
    echo "== building garage $GARAGE_VERSION (about 12 minutes on 2 cores)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until TCP port $1 on loopback accepts connections.
wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "garage: nothing listening on 127.0.0.1:$1" >&2
    return 1
}

write_config() { # node-dir s3-port rpc-port admin-port replication
    cat >"$1/garage.toml" <<EOF
metadata_dir = "$1/meta"
data_dir = "$1/data"
db_engine = "sqlite"
replication_factor = $5
rpc_bind_addr = "127.0.0.1:$3"
rpc_public_addr = "127.0.0.1:$3"
rpc_secret = "$RPC_SECRET"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$2"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$4"
EOF
}

start() {
    local dir nodes bin
    dir="$(mkdir -p "$1" && cd "$1" && pwd)"
    nodes="${2:-1}"
    bin="$(garage_bin)" || { echo "garage is not installed: scripts/garage.sh install" >&2; exit 1; }
    : >"$dir/pids"
    local s3_ports=() admin_ports=() rpc_ports=()
    for i in $(seq 1 "$nodes"); do
        local n="$dir/node$i"
        mkdir -p "$n"
        s3_ports+=("$(free_port)")
        rpc_ports+=("$(free_port)")
        admin_ports+=("$(free_port)")
        write_config "$n" "${s3_ports[-1]}" "${rpc_ports[-1]}" "${admin_ports[-1]}" "$nodes"
        if [ "$nodes" = 1 ]; then
            GARAGE_DEFAULT_ACCESS_KEY=$ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY=$SECRET_KEY \
                GARAGE_DEFAULT_BUCKET=$BUCKET \
                "$bin" -c "$n/garage.toml" server --single-node --default-bucket \
                >"$n/log" 2>&1 &
        else
            "$bin" -c "$n/garage.toml" server >"$n/log" 2>&1 &
        fi
        echo $! >>"$dir/pids"
    done
    for p in "${s3_ports[@]}"; do
        if ! wait_port "$p"; then
            tail -n 5 "$dir"/node*/log >&2
            stop "$dir"
            return 1
        fi
    done
    if [ "$nodes" != 1 ]; then
        local c1="$dir/node1/garage.toml"
        for i in $(seq 2 "$nodes"); do
            local id
            id="$("$bin" -c "$dir/node$i/garage.toml" node id -q)"
            "$bin" -c "$c1" node connect "$id" >/dev/null
        done
        for i in $(seq 1 "$nodes"); do
            local id
            id="$("$bin" -c "$dir/node$i/garage.toml" node id -q | cut -d@ -f1)"
            "$bin" -c "$c1" layout assign -z loopback -c 1G "$id" >/dev/null
        done
        "$bin" -c "$c1" layout apply --version 1 >/dev/null
        "$bin" -c "$c1" key import --yes -n modelfs-test "$ACCESS_KEY" "$SECRET_KEY" >/dev/null
        "$bin" -c "$c1" bucket create "$BUCKET" >/dev/null
        "$bin" -c "$c1" bucket allow --read --write --owner "$BUCKET" --key modelfs-test >/dev/null
    fi
    local ports
    ports="$(IFS=,; echo "${s3_ports[*]}")"
    cat >"$dir/env" <<EOF
export TILEDB_VFS_S3_ENDPOINT_OVERRIDE=127.0.0.1:${s3_ports[0]}
export TILEDB_VFS_S3_SCHEME=http
export TILEDB_VFS_S3_REGION=$REGION
export TILEDB_VFS_S3_USE_VIRTUAL_ADDRESSING=false
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export MODELFS_TEST_S3=s3://$BUCKET
export GARAGE_S3_PORTS=$ports
export GARAGE_ADMIN_PORTS=$(IFS=,; echo "${admin_ports[*]}")
export GARAGE_PIDS=$(paste -sd, "$dir/pids")
EOF
    # The bucket answers once the layout is in place.
    for _ in $(seq 1 100); do
        if (source "$dir/env" && "$(dirname "$0")/../.venv/bin/python" - <<'PY' 2>/dev/null); then
import os, tiledb
tiledb.VFS().ls(os.environ["MODELFS_TEST_S3"])
PY
            echo "garage: $nodes node(s) on 127.0.0.1 (S3 ports $ports), state in $dir" >&2
            return 0
        fi
        sleep 0.1
    done
    echo "garage: the bucket did not become ready; logs under $dir" >&2
    stop "$dir"
    return 1
}

stop() {
    local dir="$1"
    [ -f "$dir/pids" ] || return 0
    while read -r pid; do
        kill "$pid" 2>/dev/null || true
    done <"$dir/pids"
    while read -r pid; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    done <"$dir/pids"
    rm -f "$dir/pids"
}

case "${1:-}" in
install) install ;;
start) start "$2" "${3:-1}" ;;
stop) stop "$2" ;;
*)
    echo "usage: $0 install | start DIR [1|3] | stop DIR" >&2
    exit 2
    ;;
esac
