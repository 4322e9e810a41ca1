# scripts/peer/authrelay.sh — sourced by scripts/bench.sh and
# scripts/bench-peer.sh: start authrelay for a benchmark.
#
#   ar_free_port                       a free loopback TCP port
#   ar_redis_start DIR                 private Redis (TCP + Unix socket), no
#                                      persistence: AR_REDIS_PID, AR_REDIS_PORT,
#                                      AR_REDIS_SOCK
#   ar_split_start BIN DIR TRANSPORT LIMITS
#                                      the four services as separate processes
#                                      (needs ar_redis_start first); TRANSPORT
#                                      unix|tcp for gRPC and Redis, LIMITS on
#                                      (the shipped sasl.limits) or off;
#                                      AR_SPLIT_PIDS (credential-store,
#                                      sasl-auth, relay-queue, smtp-frontend),
#                                      AR_SPLIT_PORT, AR_SPLIT_CONFIG
#   ar_serve_start BIN DIR             `authrelay serve`, all four in one
#                                      process, no Redis (in-process store):
#                                      AR_SERVE_PID, AR_SERVE_PORT, AR_SERVE_CONFIG
#   ar_add_users BIN CONFIG N PASSWORD users load0..load{N-1}, one password
#
# Both run like the Postfix + Dovecot they are compared with: no TLS
# (sasl.allow_plaintext_without_tls), realm bench.example, accepted mail
# spooled durably and held (relay_queue.delivery_mode = "queue-only"),
# connection limits far above the 10,000 idle connections of bench-peer.
# The caller kills the pids it is handed.

ar_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 64 hex digits in a 0600 file: a token or the SASL exchange-sealing key.
ar_secret_file() { (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$1"); }

ar_redis_start() {
  local dir=$1
  AR_REDIS_PORT=$(ar_free_port)
  AR_REDIS_SOCK=$dir/redis.sock
  redis-server --port "$AR_REDIS_PORT" --bind 127.0.0.1 --unixsocket "$AR_REDIS_SOCK" --unixsocketperm 600 \
    --save "" --appendonly no --dir "$dir" --maxclients 20000 >"$dir/redis.log" 2>&1 &
  AR_REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$AR_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
}

# The parts of the configuration both topologies share.
ar_common_toml() {
  local dir=$1
  cat <<TOML
hostname = "bench.example"
default_realm = "bench.example"
data_dir = "$dir/data"
[log]
level = "warn"
# The load sends thousands of messages an hour per user, which the
# stolen-account limits exist to stop (Postfix + Dovecot have none).
[limits.per_user]
enabled = false
[sasl]
# Postfix + Dovecot are measured without TLS: compare like with like.
# (Last: the caller may append more [sasl] keys.)
allow_plaintext_without_tls = true
TOML
}

ar_frontend_toml() {
  local port=$1
  cat <<TOML
[frontend.tls]
disabled = true
[[frontend.listeners]]
address = "127.0.0.1:$port"
role = "relay"
TOML
}

ar_split_start() {
  local bin=$1 dir=$2 transport=$3 limits=$4
  mkdir -p "$dir"
  local cs sa rq adm redis_url ep_cs ep_sa ep_rq
  cs=$(ar_free_port); sa=$(ar_free_port); rq=$(ar_free_port); adm=$(ar_free_port)
  AR_SPLIT_PORT=$(ar_free_port)
  if [ "$transport" = unix ]; then
    redis_url="unix://$AR_REDIS_SOCK"
    ep_cs="unix:$dir/cs.sock"; ep_sa="unix:$dir/sa.sock"; ep_rq="unix:$dir/rq.sock"
  else
    redis_url="redis://127.0.0.1:$AR_REDIS_PORT/"
    ep_cs="http://127.0.0.1:$cs"; ep_sa="http://127.0.0.1:$sa"; ep_rq="http://127.0.0.1:$rq"
  fi
  # Separate services authenticate each other (internal.token_file) and
  # share the key sealing SASL exchange state between steps.
  ar_secret_file "$dir/internal.token"; ar_secret_file "$dir/admin.token"; ar_secret_file "$dir/exchange.key"
  AR_SPLIT_CONFIG=$dir/authrelay.toml
  {
    ar_common_toml "$dir"
    echo "exchange_key_file = \"$dir/exchange.key\""
    if [ "$limits" = off ]; then
      printf '[sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n'
    fi
    cat <<TOML
[admin]
token_file = "$dir/admin.token"
[internal]
token_file = "$dir/internal.token"
[redis]
url = "$redis_url"
[endpoints]
credential_store = "$ep_cs"
sasl_auth = "$ep_sa"
relay_queue = "$ep_rq"
frontend = "http://127.0.0.1:$adm"
[credential_store]
listen = "127.0.0.1:$cs"
listen_unix = "$dir/cs.sock"
[sasl_auth]
listen = "127.0.0.1:$sa"
listen_unix = "$dir/sa.sock"
[relay_queue]
listen = "127.0.0.1:$rq"
listen_unix = "$dir/rq.sock"
delivery_mode = "queue-only"
[frontend]
admin_listen = "127.0.0.1:$adm"
max_connections = 20000
max_connections_per_ip = 20000
TOML
    ar_frontend_toml "$AR_SPLIT_PORT"
  } >"$AR_SPLIT_CONFIG"
  AR_SPLIT_PIDS=()
  local svc
  for svc in credential-store sasl-auth relay-queue smtp-frontend; do
    "$bin/$svc" --config "$AR_SPLIT_CONFIG" >"$dir/$svc.out" 2>"$dir/$svc.log" &
    AR_SPLIT_PIDS+=($!)
    for _ in $(seq 200); do grep -q listening "$dir/$svc.out" 2>/dev/null && break; sleep 0.05; done
    if ! kill -0 "${AR_SPLIT_PIDS[-1]}" 2>/dev/null; then
      echo "bench: $svc did not start:" >&2; cat "$dir/$svc.log" >&2; return 1
    fi
  done
}

ar_serve_start() {
  local bin=$1 dir=$2
  mkdir -p "$dir"
  AR_SERVE_PORT=$(ar_free_port)
  AR_SERVE_CONFIG=$dir/authrelay.toml
  {
    ar_common_toml "$dir"
    cat <<TOML
[relay_queue]
delivery_mode = "queue-only"
[frontend]
admin_listen = "127.0.0.1:$(ar_free_port)"
max_connections = 20000
max_connections_per_ip = 20000
TOML
    ar_frontend_toml "$AR_SERVE_PORT"
  } >"$AR_SERVE_CONFIG"
  "$bin/authrelay" --config "$AR_SERVE_CONFIG" serve >"$dir/serve.out" 2>"$dir/serve.log" &
  AR_SERVE_PID=$!
  for _ in $(seq 200); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' \
      "$AR_SERVE_PORT" 2>/dev/null && break
    sleep 0.05
  done
  if ! kill -0 "$AR_SERVE_PID" 2>/dev/null; then
    echo "bench: authrelay serve did not start:" >&2; cat "$dir/serve.log" >&2; return 1
  fi
}

ar_add_users() {
  local bin=$1 config=$2 n=$3 password=$4 i
  for i in $(seq 0 $((n - 1))); do
    echo "$password" | "$bin/authrelay" --config "$config" user add "load$i" >/dev/null
  done
}
