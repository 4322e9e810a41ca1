# scripts/peer/postfix-dovecot.sh — sourced by scripts/bench-peer.sh.
#
# A private Postfix + Dovecot SASL, the reference the issue compares
# authrelay against, configured like a submission server with Dovecot auth:
#
# - Dovecot (`dovecot -c $dir/dovecot.conf`): no mail protocols, only the
#   auth service, with its client socket in the temp dir; passdb passwd-file
#   with the benchmark's users and `{PLAIN}` passwords (the one scheme from
#   which Dovecot can serve every mechanism asked for: CRAM-MD5 and
#   DIGEST-MD5 need the password or an MD5 of it, SCRAM a salted key);
#   auth_cache_size = 10M, as Dovecot installations commonly run.
# - Postfix (`postfix -c $dir/etc start`): one smtpd on a loopback port,
#   smtpd_sasl_type = dovecot, relay only for authenticated clients, no TLS
#   (authrelay runs with sasl.allow_plaintext_without_tls, same thing), and
#   every accepted message put on hold: queued durably, delivered nowhere —
#   authrelay's relay_queue.delivery_mode = "queue-only".
#
# Nothing under /etc/postfix or /etc/dovecot is changed or used as
# configuration: Postfix's meta files (postfix-files, dynamicmaps.cf) are
# copied into the private config directory. Both run as root-started
# daemons that drop to the package's users (postfix, dovecot, dovenull),
# so the temp dir must be traversable by them.
#
# peer_start DIR PORT REALM PASSWORD USERS PROCESS_LIMIT
#   sets PEER_PF_MASTER and PEER_DC_MASTER (the two masters' pids).
# peer_stop DIR

peer_start() {
  local dir=$1 port=$2 realm=$3 password=$4 users=$5 plimit=$6
  local pf=$dir/postfix dc=$dir/dovecot
  # Postfix creates the queue's subdirectories itself (postfix check).
  mkdir -p "$pf/etc" "$pf/spool" "$pf/data" "$dc/run" "$dc/state"
  chown postfix "$pf/data"; chmod 700 "$pf/data"
  chmod 755 "$dir" "$pf" "$dc"
  chown dovecot:dovecot "$dc/state" 2>/dev/null || true

  # ---- Dovecot: auth only.
  : >"$dc/users"
  for i in $(seq 0 $((users - 1))); do
    printf 'load%s@%s:{PLAIN}%s\n' "$i" "$realm" "$password" >>"$dc/users"
  done
  chown root:dovecot "$dc/users"; chmod 640 "$dc/users"
  cat >"$dc/dovecot.conf" <<CONF
# Private instance for scripts/bench-peer.sh; not the system's Dovecot.
instance_name = authrelay-bench-$$
base_dir = $dc/run
state_dir = $dc/state
protocols =
listen = 127.0.0.1
ssl = no
log_path = $dc/dovecot.log
info_log_path = $dc/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
# 10,000 idle smtpd processes each hold a connection to the auth service.
default_client_limit = $((plimit + 100))
disable_plaintext_auth = no
auth_mechanisms = plain login cram-md5 digest-md5 scram-sha-256
auth_realms = $realm
auth_default_realm = $realm
auth_cache_size = 10M
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dc/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener $dc/auth-client {
    mode = 0666
  }
  client_limit = $((plimit + 100))
}
service auth-worker {
  user = dovecot
}
service stats {
  client_limit = $((plimit + 100))
}
service anvil {
  client_limit = $((plimit + 100))
}
CONF
  dovecot -c "$dc/dovecot.conf" || { cat "$dc/dovecot.log" >&2; return 1; }
  for _ in $(seq 100); do [ -S "$dc/auth-client" ] && [ -s "$dc/run/master.pid" ] && break; sleep 0.05; done
  PEER_DC_MASTER=$(cat "$dc/run/master.pid")

  # ---- Postfix: a submission smtpd on 127.0.0.1:PORT.
  cp -a /etc/postfix/postfix-files /etc/postfix/dynamicmaps.cf "$pf/etc/"
  [ -d /etc/postfix/postfix-files.d ] && cp -a /etc/postfix/postfix-files.d "$pf/etc/"
  [ -d /etc/postfix/dynamicmaps.cf.d ] && cp -a /etc/postfix/dynamicmaps.cf.d "$pf/etc/"
  cat >"$pf/etc/main.cf" <<CONF
# Private instance for scripts/bench-peer.sh; not the system's Postfix.
compatibility_level = 3.6
meta_directory = $pf/etc
queue_directory = $pf/spool
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = peer.$realm
mydomain = $realm
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
# authrelay does no reverse DNS on clients either.
smtpd_peername_lookup = no
# A real Postfix runs one smtpd per connection: the idle-connection row
# needs one process per connection, so the limit is the row's size.
default_process_limit = $plimit
# Opening 10,000 smtpd processes takes minutes here (fork + exec + Dovecot
# handshake each); the default 300 s would time out the first ones before
# the last are open. Only the idle row ever waits on a client.
smtpd_timeout = 1200s
smtpd_tls_security_level = none
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $dc/auth-client
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
# Accepted mail is queued (fsync'd by cleanup) and put on hold: nothing is
# delivered, as with authrelay's delivery_mode = "queue-only".
smtpd_data_restrictions = check_client_access static:HOLD
default_transport = discard:held
relay_transport = discard:held
CONF
  cat >"$pf/etc/master.cf" <<CONF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$port inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CONF
  postfix -c "$pf/etc" start >"$pf/start.log" 2>&1 || { cat "$pf/start.log" "$pf/maillog" >&2 2>/dev/null; return 1; }
  for _ in $(seq 100); do [ -s "$pf/spool/pid/master.pid" ] && break; sleep 0.05; done
  PEER_PF_MASTER=$(tr -d ' ' <"$pf/spool/pid/master.pid")
}

peer_stop() {
  local dir=$1
  [ -f "$dir/postfix/etc/main.cf" ] && postfix -c "$dir/postfix/etc" stop >/dev/null 2>&1 || true
  [ -f "$dir/dovecot/dovecot.conf" ] && doveadm -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 \
    || { [ -s "$dir/dovecot/run/master.pid" ] && kill "$(cat "$dir/dovecot/run/master.pid")" 2>/dev/null; } || true
  # postfix stop returns before the master has reaped 10,000 smtpd processes.
  for _ in $(seq 200); do
    { [ -n "${PEER_PF_MASTER:-}" ] && kill -0 "$PEER_PF_MASTER" 2>/dev/null; } ||
      { [ -n "${PEER_DC_MASTER:-}" ] && kill -0 "$PEER_DC_MASTER" 2>/dev/null; } || break
    sleep 0.1
  done
}
