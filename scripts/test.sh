#!/usr/bin/env bash
# The one command that runs every test: scripts/test.sh
#
# On a fresh Debian machine it installs what the tests need (redis-server,
# PostgreSQL, Python's aiosmtpd), starts private Redis and PostgreSQL
# servers on ephemeral ports unless REDIS_URL / DATABASE_URL point at
# running ones, builds the binaries once, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d /tmp/authrelay-test.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${pg_dir:-}" ]; then runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say() { echo "==> $*"; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "missing: $* — install it with your package manager" >&2
    exit 1
  fi
  say "installing $*"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- tools -----------------------------------------------------------------
command -v python3 >/dev/null || apt_install python3 python3-pip
command -v redis-server >/dev/null || apt_install redis-server
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  say "installing aiosmtpd (the tests' independent sink SMTP server)"
  python3 -m pip install --quiet aiosmtpd 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages aiosmtpd 2>/dev/null \
    || apt_install python3-aiosmtpd
fi

# --- Redis -----------------------------------------------------------------
if [ -z "${REDIS_URL:-}" ]; then
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  export REDIS_URL="redis://127.0.0.1:$port/"
  say "private redis-server at $REDIS_URL"
fi

# --- PostgreSQL ------------------------------------------------------------
if [ -z "${DATABASE_URL:-}" ]; then
  if command -v psql >/dev/null && psql "postgres://postgres@127.0.0.1:5432/test" -qtAc 'select 1' >/dev/null 2>&1; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
    say "using the PostgreSQL at $DATABASE_URL"
  else
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$pg_bin" ]; then apt_install postgresql; pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); fi
    pg_dir="$work/pg"; mkdir -p "$pg_dir"; chown postgres "$pg_dir" 2>/dev/null || true
    port=$(free_port)
    # initdb refuses to run as root: run the private cluster as postgres.
    as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    as_pg "$pg_bin/initdb" -D "$pg_dir" -A trust -U postgres >"$work/initdb.log" 2>&1
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir" -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" -l "$work/pg.log" -w start >/dev/null
    as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
    say "private PostgreSQL at $DATABASE_URL"
  fi
fi

# --- build once, test everything --------------------------------------------
say "building the binaries"
cargo build --workspace --bins --locked
say "running the tests"
cargo test --workspace --locked "$@"
