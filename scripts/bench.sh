#!/usr/bin/env bash
# scripts/bench.sh [SECONDS_PER_RUN]
#
# The end-to-end benchmark: release binaries, the four services as separate
# processes with a private Redis, 100 users, and tools/smtp-load on the same
# machine running the matrix — mechanisms PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5,
# SCRAM-SHA-256; auth-only sessions and authenticated 1 KiB submissions
# (spooled durably, delivery held: relay_queue.delivery_mode = queue-only);
# 1, 16 and 64 concurrent clients. Results replace the "End-to-end" section
# of BENCHMARKS.md, with the machine, versions and date.
#
# For every run it also reads each process's CPU time (/proc/PID/stat for
# the services and Redis, the load tool's own report) and writes the CPU
# microseconds one session costs in each: where the time goes, and the
# ceiling of the machine (cores ÷ total CPU per session).
#
# A subset, e.g. while profiling (BENCH_WRITE=0 leaves BENCHMARKS.md alone):
#   BENCH_MECHS=CRAM-MD5 BENCH_SIZES=0 BENCH_CLIENTS=16 BENCH_WRITE=0 scripts/bench.sh 5
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --locked --workspace --bins
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/authrelay-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# shellcheck source=peer/authrelay.sh
source scripts/peer/authrelay.sh

# Co-located services talk over Unix-domain sockets (gRPC and Redis), as
# Postfix's smtpd talks to Dovecot's auth; BENCH_TRANSPORT=tcp measures the
# loopback-TCP set-up that separate hosts or pods use.
export BENCH_TRANSPORT=${BENCH_TRANSPORT:-unix}
# Without brute-force limits, as Postfix + Dovecot were measured (like for
# like); BENCH_LIMITS=on keeps the shipped defaults, where every AUTH also
# reads the per-address and per-user failure counts in Redis.
export BENCH_LIMITS=${BENCH_LIMITS:-off}
# The configuration (no TLS, queue-only, tokens and the exchange key that
# separate services need) is written by scripts/peer/authrelay.sh, shared
# with scripts/bench-peer.sh.
ar_redis_start "$work"; pids+=("$AR_REDIS_PID")
ar_split_start "$bin" "$work" "$BENCH_TRANSPORT" "$BENCH_LIMITS"; pids+=("${AR_SPLIT_PIDS[@]}")
fe=$AR_SPLIT_PORT

echo "==> adding 100 users"
ar_add_users "$bin" "$AR_SPLIT_CONFIG" 100 bench-Password
export SMTP_LOAD_PASSWORD=bench-Password

echo "==> warm-up: one PLAIN login per user (fills sasl-auth's verified-credential cache)"
"$bin/smtp-load" --server "127.0.0.1:$fe" -c 4 -d 4s --mech PLAIN --users 100 --user 'load{n}' >/dev/null

# utime + stime in clock ticks (proc(5) fields 14 and 15).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# pids: redis, credential-store, sasl-auth, relay-queue, smtp-frontend.
names=(redis credential-store sasl-auth relay-queue smtp-frontend)
results="$work/results.jsonl"
for size in ${BENCH_SIZES:-0 1024}; do
  for mech in ${BENCH_MECHS:-PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-256}; do
    for c in ${BENCH_CLIENTS:-1 16 64}; do
      echo "==> $mech size=$size c=$c"
      before=(); for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
      line=$("$bin/smtp-load" --server "127.0.0.1:$fe" -c "$c" -d "${secs}s" --mech "$mech" --users 100 \
        --user 'load{n}' --scram-cache --size "$size" --to "sink@bench.example" --json)
      cpu="{"; for i in "${!pids[@]}"; do
        cpu+="\"${names[$i]}\": $(( ($(cpu_ticks "${pids[$i]}") - ${before[$i]}) * 10 )),"
      done
      cpu="${cpu%,}}"
      echo "$line" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["server_cpu_ms"]=json.loads(sys.argv[1]); print(json.dumps(r))' "$cpu" | tee -a "$results"
    done
  done
done

python3 - "$results" "$root/BENCHMARKS.md" "$secs" <<'PY'
import json, os, platform, subprocess, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = ["<!-- bench:start -->", "## End-to-end: sessions per second (`scripts/bench.sh`)", "",
       f"Machine: {os.cpu_count()} × {cpu}; {rustc}; commit {rev}; {datetime.date.today()}; "
       f"{sys.argv[3]} s per run; four services + Redis + the load client on the same machine, "
       f"no TLS, 100 users, SCRAM client cache on (RFC 5802 §5.1); gRPC and Redis over "
       f"{'Unix-domain sockets' if os.environ.get('BENCH_TRANSPORT', 'unix') == 'unix' else 'loopback TCP'}; "
       f"brute-force limits {'off' if os.environ.get('BENCH_LIMITS') == 'off' else 'on (defaults)'}; "
       "each user logged in once with PLAIN before the runs, so PLAIN/LOGIN measure the "
       "verified-credential cache a returning client meets (a cold login costs one Argon2id "
       "verification, see the SASL table above).", "",
       "| mechanism | body | clients | sessions/s | AUTH p50 ms | AUTH p99 ms | session p99 ms | errors |",
       "|---|---|---|---|---|---|---|---|"]
for r in rows:
    errs = sum(r["errors"].values())
    out.append(f"| {r['mechanism']} | {'auth only' if r['size']==0 else str(r['size'])+' B'} | {r['concurrency']} | "
               f"{r['sessions_per_sec']:.0f} | {r['auth']['p50_ms']:.2f} | {r['auth']['p99_ms']:.2f} | "
               f"{r['session']['p99_ms']:.2f} | {errs} |")
out += ["", "### Where the time goes: CPU per session", "",
        "CPU time (user + system, from /proc) each process spent per completed session during "
        "the run, in µs. The machine has "
        f"{os.cpu_count()} cores, so {os.cpu_count()} × 10⁶ ÷ total is the rate at which it would be "
        "CPU-bound; the kernel's loopback TCP work is charged to the process that made the syscall.", "",
        "| mechanism | body | clients | frontend | sasl-auth | credential-store | relay-queue | Redis | load client | total | CPU-bound ceiling /s |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    n = max(r["sessions"], 1)
    per = {k: v * 1000 / n for k, v in r["server_cpu_ms"].items()}
    per["load"] = (r.get("client_cpu_ms") or 0) * 1000 / n
    total = sum(per.values())
    cols = [per["smtp-frontend"], per["sasl-auth"], per["credential-store"], per["relay-queue"], per["redis"], per["load"]]
    out.append(f"| {r['mechanism']} | {'auth only' if r['size']==0 else str(r['size'])+' B'} | {r['concurrency']} | "
               + " | ".join(f"{v:.0f}" for v in cols) + f" | {total:.0f} | {os.cpu_count() * 1e6 / total if total else 0:.0f} |")
out.append("<!-- bench:end -->")
if os.environ.get("BENCH_WRITE", "1") == "0":
    print("\n".join(out))
    sys.exit(0)
path = sys.argv[2]
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
if "<!-- bench:start -->" in text:
    a = text.index("<!-- bench:start -->"); b = text.index("<!-- bench:end -->") + len("<!-- bench:end -->")
    text = text[:a] + "\n".join(out) + text[b:]
else:
    text = text.rstrip() + "\n\n" + "\n".join(out) + "\n"
open(path, "w").write(text)
print("\n".join(out))
PY
