#!/usr/bin/env bash
# scripts/bench-peer.sh [SECONDS_PER_RUN]
#
# authrelay side by side with Postfix + Dovecot SASL, in one run on this
# machine, with tools/smtp-load as the client of all three systems:
#
#   authrelay        the four services as separate processes, gRPC and Redis
#                    over loopback TCP (as in Kubernetes), shipped brute-force
#                    limits on
#   authrelay serve  the all-in-one binary, no Redis (in-process store)
#   Postfix+Dovecot  private instances from Debian's packages (installed when
#                    missing, never configured or started as the system's
#                    mail service): smtpd with Dovecot SASL
#
# Same 100 users (load0..load99, realm bench.example, one password) on all
# three, no TLS anywhere, accepted mail spooled durably and held. Rows, each
# cell run on every system in turn (so drift hits all of them alike):
# PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5, SCRAM-SHA-256 auth-only at 16 and 64
# clients; PLAIN + a 1 KiB message at 16 and 64 clients; then the memory of
# BENCH_IDLE (10,000) idle connections (connect + EHLO, held) per system.
# For each: sessions/s, AUTH p50/p99 and the CPU one session costs the
# whole system (every process of it, from /proc, exited children included:
# scripts/peer/procstat.py). One markdown table at the end, with the ratio
# to Postfix + Dovecot; it replaces the block between the bench-peer
# markers in BENCHMARKS.md unless BENCH_WRITE=0.
#
# Knobs: BENCH_MECHS, BENCH_CLIENTS (16 64), BENCH_SIZES (0 1024; the body
# rows run PLAIN only), BENCH_IDLE (10000; 0 skips the memory rows),
# BENCH_WRITE (1), BENCH_SYSTEMS (split serve postfix), BENCH_BUILD (1),
# BENCH_EQUAL (1: each cell again, open loop, every system at 80 % of
# Postfix's sessions/s, for AUTH latency at an equal load; 0 skips it),
# BENCH_LOAD_ARGS (more smtp-load flags for every run, e.g. --threads 2),
# BENCH_REPEAT (3: rounds of each cell, the systems taking turns; the
# table shows each figure's median over the rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=peer/install.sh
source scripts/peer/install.sh
# shellcheck source=peer/postfix-dovecot.sh
source scripts/peer/postfix-dovecot.sh
# shellcheck source=peer/authrelay.sh
source scripts/peer/authrelay.sh

systems=${BENCH_SYSTEMS:-split serve postfix}
idle_n=${BENCH_IDLE:-10000}
repeat=${BENCH_REPEAT:-3}
users=100
realm=bench.example
export SMTP_LOAD_PASSWORD=bench-Password

has() { case " $systems " in *" $1 "*) return 0;; esac; return 1; }

if has postfix; then peer_install; fi
# BENCH_BUILD=0 uses the binaries already in $CARGO_TARGET_DIR/release.
[ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release --locked -p authrelay -p smtp-frontend -p sasl-auth -p credential-store -p relay-queue -p smtp-load
bin="$CARGO_TARGET_DIR/release"

# Every system holds idle_n connections at the end, and so does the client.
want_fds=$((idle_n + 2000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_fds" ]; then
  ulimit -n "$(ulimit -Hn)"
  echo "bench-peer: the open-files limit is $(ulimit -n), below $want_fds: the idle rows may fall short" >&2
else
  ulimit -n "$want_fds"
fi

work=$(mktemp -d /tmp/authrelay-bench-peer.XXXXXX)
pids=()
cleanup() {
  set +e
  has postfix && peer_stop "$work"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A port roots label
label[split]="authrelay (4 services, TCP + Redis)"
label[serve]="authrelay serve"
label[postfix]="Postfix + Dovecot"

if has split; then
  echo "==> authrelay: four services, loopback TCP, Redis, shipped limits"
  ar_redis_start "$work"; pids+=("$AR_REDIS_PID")
  ar_split_start "$bin" "$work/split" tcp on; pids+=("${AR_SPLIT_PIDS[@]}")
  ar_add_users "$bin" "$AR_SPLIT_CONFIG" "$users" "$SMTP_LOAD_PASSWORD"
  port[split]=$AR_SPLIT_PORT; roots[split]="${AR_SPLIT_PIDS[*]} $AR_REDIS_PID"
fi
if has serve; then
  echo "==> authrelay serve: all in one process, no Redis"
  ar_serve_start "$bin" "$work/serve"; pids+=("$AR_SERVE_PID")
  ar_add_users "$bin" "$AR_SERVE_CONFIG" "$users" "$SMTP_LOAD_PASSWORD"
  port[serve]=$AR_SERVE_PORT; roots[serve]=$AR_SERVE_PID
fi
if has postfix; then
  echo "==> Postfix + Dovecot: private instances under $work"
  port[postfix]=$(ar_free_port)
  peer_start "$work" "${port[postfix]}" "$realm" "$SMTP_LOAD_PASSWORD" "$users" $((idle_n + 100))
  roots[postfix]="$PEER_PF_MASTER $PEER_DC_MASTER"
fi

load() { "$bin/smtp-load" --server "127.0.0.1:${port[$1]}" --users "$users" --user 'load{n}' ${BENCH_LOAD_ARGS:-} "${@:2}"; }

echo "==> warm-up: one PLAIN login per user on each system (authrelay's verified-credential cache, Dovecot's auth cache)"
for s in $systems; do load "$s" -c 4 -d 3s --mech PLAIN >/dev/null; done

cpu() { python3 scripts/peer/procstat.py cpu ${roots[$1]}; }
mem() { python3 scripts/peer/procstat.py mem --port "${port[$1]}" ${roots[$1]}; }
results=$work/results.jsonl
run_one() { # SYSTEM MODE MECH SIZE CLIENTS [smtp-load args...]
  local s=$1 mode=$2 before line after
  before=$(cpu "$s")
  line=$(load "$s" -c "$5" -d "${secs}s" --mech "$3" --scram-cache --size "$4" --to "sink@$realm" --json "${@:6}")
  after=$(cpu "$s")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["system"]=sys.argv[2]; r["mode"]=sys.argv[3]; r["cpu_before"]=json.loads(sys.argv[4]); r["cpu_after"]=json.loads(sys.argv[5]); print(json.dumps(r))' \
    "$line" "$s" "$mode" "$before" "$after" | tee -a "$results" | python3 -c 'import json,sys; r=json.load(sys.stdin); a=r["auth"]; print("    %.0f/s  AUTH p50 %.2f p99 %.2f ms  session p50 %.2f p99 %.2f ms  errors %d  client CPU %.0f %%" % (r["sessions_per_sec"], a["p50_ms"], a["p99_ms"], r["session"]["p50_ms"], r["session"]["p99_ms"], sum(r["errors"].values()), (r.get("client_cpu_ms") or 0) / 10.0 / float(sys.argv[1])))' "$secs"
}
run_cell() { # MECH SIZE CLIENTS
  local s rate rep
  # Every cell starts from warm caches: authrelay's verified-credential
  # cache lives sasl.verified_cache_ttl (5 min), Dovecot's auth cache an
  # hour, and a run of all cells takes longer than five minutes: without
  # this the last cells would measure Argon2id re-verifying 100 users.
  for s in $systems; do load "$s" -c 4 -d 2s --mech PLAIN >/dev/null; done
  # Each cell BENCH_REPEAT times, the systems taking turns within each
  # round: a neighbour's burst on a shared box then lands on one run of
  # one system, and the report's median of the rounds leaves it out.
  for rep in $(seq "$repeat"); do
    for s in $systems; do
      echo "==> $1 size=$2 c=$3 (round $rep of $repeat): ${label[$s]}"
      run_one "$s" max "$@"
    done
  done
  # Latency at an equal load: a closed loop runs each system at its own
  # maximum, where AUTH latency is mostly queueing behind more sessions a
  # second. Every system again, open loop, at 80 % of Postfix's maximum
  # (the median of its rounds).
  if has postfix && [ "${BENCH_EQUAL:-1}" != 0 ]; then
    rate=$(tail -n $((repeat * 3)) "$results" | python3 -c 'import json,statistics,sys
rs=[json.loads(l) for l in sys.stdin if l.strip()]
r=[x["sessions_per_sec"] for x in rs if x.get("system")=="postfix" and x.get("mode")=="max"][-int(sys.argv[1]):]
print(round(0.8*statistics.median(r)))' "$repeat")
    for rep in $(seq "$repeat"); do
      for s in $systems; do
        echo "==> $1 size=$2 c=$3 at $rate sessions/s (round $rep of $repeat): ${label[$s]}"
        run_one "$s" equal "$@" --rate "$rate"
      done
    done
  fi
}
for c in ${BENCH_CLIENTS:-16 64}; do
  for mech in ${BENCH_MECHS:-PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-256}; do run_cell "$mech" 0 "$c"; done
done
for size in ${BENCH_SIZES:-0 1024}; do
  [ "$size" = 0 ] && continue
  for c in ${BENCH_CLIENTS:-16 64}; do run_cell PLAIN "$size" "$c"; done
done

# Memory of idle connections, one system at a time, Postfix last: it needs
# one smtpd process per connection (about 1.2 MiB of PSS each here) and
# keeps them for max_idle (100 s) after the clients leave.
if [ "$idle_n" -gt 0 ]; then
  for s in $systems; do
    n=$idle_n
    if [ "$s" = postfix ]; then
      avail=$(awk '/MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
      cap=$(( (avail - 2048) * 10 / 15 ))   # 1.5 MiB a connection, 2 GiB spare
      if [ "$cap" -lt "$n" ]; then
        echo "bench-peer: ${avail} MiB available: Postfix idle row capped at $cap connections" >&2
        n=$cap
      fi
    fi
    echo "==> $n idle connections: ${label[$s]}"
    base=$(mem "$s")
    hold=$(( n / 1000 + 15 ))
    load "$s" --idle "$n" -c 100 -d "${hold}s" --json >"$work/idle-$s.json" 2>"$work/idle-$s.err" &
    lp=$!
    for _ in $(seq 1200); do grep -q '^idle:' "$work/idle-$s.err" 2>/dev/null && break; kill -0 "$lp" 2>/dev/null || break; sleep 0.5; done
    sleep 3
    held=$(mem "$s")
    wait "$lp" || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["system"]=sys.argv[2]; r["mem_before"]=json.loads(sys.argv[3]); r["mem_held"]=json.loads(sys.argv[4]); print(json.dumps(r))' \
      "$work/idle-$s.json" "$s" "$base" "$held" | tee -a "$results"
  done
fi

BENCH_SECS=$secs BENCH_IDLE=$idle_n BENCH_REPEAT=$repeat BENCH_BUILD=${BENCH_BUILD:-1} python3 scripts/peer/report.py "$results" "$root/BENCHMARKS.md"
