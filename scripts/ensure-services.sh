#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, for the tests and the cluster demo.
# Each is left alone when it already answers, started when it is installed but stopped, and installed with
# apt-get (as root, on Debian/Ubuntu) when it is missing. Safe to run again: it does nothing twice.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379
READY_TIMEOUT_S=60

log() { printf '[services] %s\n' "$*"; }

port_open() {  # port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for_port() {  # wait_for_port NAME PORT: poll until it accepts connections, or fail after READY_TIMEOUT_S
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until port_open "$2"; do
        if ((SECONDS > deadline)); then
            log "$1 did not start listening on 127.0.0.1:$2 within ${READY_TIMEOUT_S}s"
            exit 1
        fi
        sleep 0.2
    done
}

apt_updated=0
apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "$* is missing and this is not a Debian machine run as root: install it yourself, then run again"
        exit 1
    fi
    if ((apt_updated == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
    if port_open "$PG_PORT"; then return; fi
    local fresh_install=0
    if [[ -z "$(pg_version)" ]]; then
        apt_install postgresql
        fresh_install=1
    fi
    local version
    version=$(pg_version)
    if ((fresh_install)); then
        # A new cluster asks for a password on TCP; the tests connect as postgres over loopback without one.
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_port PostgreSQL "$PG_PORT"
}

ensure_redis() {
    if port_open "$REDIS_PORT"; then return; fi
    command -v redis-server >/dev/null || apt_install redis-server
    log "starting Redis"
    # Nothing kept on disk: the farm treats Redis as a cache that may lose everything (docs/reliability).
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --maxmemory-policy noeviction --dir /tmp
    wait_for_port Redis "$REDIS_PORT"
}

ensure_postgres
ensure_redis
log "PostgreSQL on 127.0.0.1:$PG_PORT and Redis on 127.0.0.1:$REDIS_PORT are up"
