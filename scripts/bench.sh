#!/usr/bin/env bash
# scripts/bench.sh [SECONDS_PER_RUN]
#
# The end-to-end benchmark: release binaries, the four services as separate
# processes with a private Redis, 100 users, and tools/smtp-load on the same
# machine running the matrix — mechanisms PLAIN, CRAM-MD5, DIGEST-MD5,
# SCRAM-SHA-256; auth-only sessions and authenticated 1 KiB submissions
# (spooled durably, delivery held: relay_queue.delivery_mode = queue-only);
# 1, 16 and 64 concurrent clients. Results replace the "End-to-end" section
# of BENCHMARKS.md, with the machine, versions and date.
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

cs=$(free_port); sa=$(free_port); rq=$(free_port); fe=$(free_port); adm=$(free_port)
cat >"$work/bench.toml" <<TOML
hostname = "bench.example"
default_realm = "bench.example"
data_dir = "$work/data"
[log]
level = "warn"
[redis]
url = "redis://127.0.0.1:$rport/"
[endpoints]
credential_store = "http://127.0.0.1:$cs"
sasl_auth = "http://127.0.0.1:$sa"
relay_queue = "http://127.0.0.1:$rq"
frontend = "http://127.0.0.1:$adm"
[sasl]
# Postfix + Dovecot were measured without TLS: compare like with like.
allow_plaintext_without_tls = true
[sasl.limits]
max_failures_per_ip = 0
max_failures_per_user = 0
[credential_store]
listen = "127.0.0.1:$cs"
[sasl_auth]
listen = "127.0.0.1:$sa"
[relay_queue]
listen = "127.0.0.1:$rq"
delivery_mode = "queue-only"
[frontend]
admin_listen = "127.0.0.1:$adm"
max_connections = 20000
max_connections_per_ip = 20000
[frontend.tls]
disabled = true
[[frontend.listeners]]
address = "127.0.0.1:$fe"
role = "relay"
TOML
for svc in credential-store sasl-auth relay-queue smtp-frontend; do
  "$bin/$svc" --config "$work/bench.toml" >"$work/$svc.out" 2>"$work/$svc.log" &
  pids+=($!)
  for _ in $(seq 200); do grep -q listening "$work/$svc.out" 2>/dev/null && break; sleep 0.05; done
done

echo "==> adding 100 users"
for i in $(seq 0 99); do
  echo "bench-Password-$i-x" | "$bin/authrelay" --config "$work/bench.toml" user add "load$i" >/dev/null
done
# Every user shares one password in the load tool: set them all alike.
for i in $(seq 0 99); do
  echo "bench-Password" | "$bin/authrelay" --config "$work/bench.toml" user passwd "load$i" >/dev/null
done
export SMTP_LOAD_PASSWORD=bench-Password

results="$work/results.jsonl"
for size in 0 1024; do
  for mech in PLAIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-256; do
    for c in 1 16 64; do
      echo "==> $mech size=$size c=$c"
      "$bin/smtp-load" --server "127.0.0.1:$fe" -c "$c" -d "${secs}s" --mech "$mech" --users 100 \
        --user 'load{n}' --scram-cache --size "$size" --to "sink@bench.example" --json | tee -a "$results"
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
       "no TLS, 100 users, SCRAM client cache on (RFC 5802 §5.1).", "",
       "| mechanism | body | clients | sessions/s | AUTH p50 ms | AUTH p99 ms | session p99 ms | errors |",
       "|---|---|---|---|---|---|---|---|"]
for r in rows:
    errs = sum(r["errors"].values())
    out.append(f"| {r['mechanism']} | {'auth only' if r['size']==0 else str(r['size'])+' B'} | {r['concurrency']} | "
               f"{r['sessions_per_sec']:.0f} | {r['auth']['p50_ms']:.2f} | {r['auth']['p99_ms']:.2f} | "
               f"{r['session']['p99_ms']:.2f} | {errs} |")
out.append("<!-- bench:end -->")
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
