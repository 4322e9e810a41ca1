#!/usr/bin/env bash
# tests/support/postfix-dovecot.sh — private Postfix (+ Dovecot) instances
# for tests/tests/interop.rs, from the distribution's packages, on loopback
# ports, entirely under a scratch directory: nothing under /etc/postfix or
# /etc/dovecot is changed or read as configuration (Postfix's meta files
# are copied). The templates are those of scripts/peer/postfix-dovecot.sh
# (the benchmark's private Postfix + Dovecot), adapted: TLS, delivery to a
# next hop instead of hold/discard, and a SASL client side.
#
#   postfix-dovecot.sh hub DIR PORT NEXTHOP CERT KEY REALM USER
#       Dovecot (auth service only; passdb passwd-file with USER@REALM,
#       password from $PD_PASSWORD) and a Postfix smtpd on 127.0.0.1:PORT
#       with STARTTLS (CERT/KEY), smtpd_sasl_type = dovecot, relaying only
#       for authenticated clients, to NEXTHOP (host:port), with the
#       authenticated sender recorded in its Received: header.
#   postfix-dovecot.sh client DIR RELAYHOST
#       A Postfix without smtpd (mail enters with `sendmail -C DIR/etc`)
#       whose SMTP client relays everything through RELAYHOST (host:port)
#       over mandatory STARTTLS with SASL. The password map
#       ($PD_PASSWORD and $PD_WRONG_PASSWORD, for user $PD_USER) is a 0600
#       texthash file. Transports `ar-MECH-VER` (MECH in $PD_MECHS, VER 13 or
#       12: TLS 1.3 only or at most TLS 1.2) each filter to one mechanism;
#       `arwrong-MECH` uses the wrong password. DIR/etc/transport maps the
#       recipient `MECH-VER@interop.example` to its transport.
#   postfix-dovecot.sh stop DIR
#
# Postfix and Dovecot are started as root and drop to the packages' users
# (postfix, dovecot, dovenull): DIR must be traversable by them.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

pf_meta() {
  local pf=$1
  mkdir -p "$pf/etc" "$pf/spool" "$pf/data"
  chown postfix "$pf/data"; chmod 700 "$pf/data"
  chmod 755 "$pf"
  cp -a /etc/postfix/postfix-files /etc/postfix/dynamicmaps.cf "$pf/etc/"
  [ -d /etc/postfix/postfix-files.d ] && cp -a /etc/postfix/postfix-files.d "$pf/etc/"
  [ -d /etc/postfix/dynamicmaps.cf.d ] && cp -a /etc/postfix/dynamicmaps.cf.d "$pf/etc/"
  return 0
}

pf_common_main() {
  local pf=$1 name=$2
  cat <<CONF
# Private instance for tests/tests/interop.rs; not the system's Postfix.
compatibility_level = 3.6
meta_directory = $pf/etc
queue_directory = $pf/spool
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = $name
mydomain = interop.example
myorigin = interop.example
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
smtpd_peername_lookup = no
smtp_host_lookup = native
disable_dns_lookups = yes
# Fast retries: the test waits for deliveries.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
CONF
}

pf_master_common() {
  cat <<CONF
# service type  private unpriv  chroot  wakeup  maxproc command
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
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CONF
}

pf_start() {
  local pf=$1
  postfix -c "$pf/etc" check >"$pf/start.log" 2>&1 || { cat "$pf/start.log" >&2; return 1; }
  postfix -c "$pf/etc" start </dev/null >>"$pf/start.log" 2>&1 || { cat "$pf/start.log" "$pf/maillog" >&2 2>/dev/null; return 1; }
  for _ in $(seq 200); do [ -s "$pf/spool/pid/master.pid" ] && break; sleep 0.05; done
  echo "postfix master $(tr -d ' ' <"$pf/spool/pid/master.pid")"
}

hub() {
  local dir=$1 port=$2 nexthop=$3 cert=$4 key=$5 realm=$6 user=$7
  local pf=$dir/postfix dc=$dir/dovecot
  : "${PD_PASSWORD:?the password of the hub user}"
  mkdir -p "$dc/run" "$dc/state"
  chmod 755 "$dir" "$dc"
  chown dovecot:dovecot "$dc/state" 2>/dev/null || true
  pf_meta "$pf"

  # ---- Dovecot: auth only. {PLAIN} is the one scheme from which Dovecot
  # serves every mechanism (CRAM-MD5 and DIGEST-MD5 need the password).
  (umask 027; printf '%s@%s:{PLAIN}%s\n' "$user" "$realm" "$PD_PASSWORD" >"$dc/users")
  chown root:dovecot "$dc/users"; chmod 640 "$dc/users"
  cat >"$dc/dovecot.conf" <<CONF
# Private instance for tests/tests/interop.rs; not the system's Dovecot.
instance_name = authrelay-interop-$$
base_dir = $dc/run
state_dir = $dc/state
protocols =
listen = 127.0.0.1
ssl = no
log_path = $dc/dovecot.log
info_log_path = $dc/dovecot.log
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
disable_plaintext_auth = no
auth_mechanisms = plain login cram-md5 digest-md5 scram-sha-1 scram-sha-256
auth_realms = $realm
auth_default_realm = $realm
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
}
service auth-worker {
  user = dovecot
}
CONF
  # Daemons must not hold the caller's stdout open (the test reads it to EOF).
  dovecot -c "$dc/dovecot.conf" </dev/null >"$dc/start.log" 2>&1 || { cat "$dc/start.log" "$dc/dovecot.log" >&2; return 1; }
  for _ in $(seq 200); do [ -S "$dc/auth-client" ] && [ -s "$dc/run/master.pid" ] && break; sleep 0.05; done
  echo "dovecot master $(cat "$dc/run/master.pid")"

  # ---- Postfix: a submission smtpd with Dovecot SASL, relaying onward.
  { pf_common_main "$pf" "mailhub.interop.example"
    cat <<CONF
relayhost = [${nexthop%:*}]:${nexthop##*:}
smtp_tls_security_level = none
smtpd_tls_security_level = may
smtpd_tls_cert_file = $cert
smtpd_tls_key_file = $key
smtpd_tls_received_header = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $dc/auth-client
smtpd_sasl_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
CONF
  } >"$pf/etc/main.cf"
  { echo "127.0.0.1:$port inet n  -       n       -       -       smtpd"; pf_master_common; } >"$pf/etc/master.cf"
  pf_start "$pf"
}

client() {
  local dir=$1 relayhost=$2
  local pf=$dir/postfix
  : "${PD_USER:?}" "${PD_PASSWORD:?}" "${PD_WRONG_PASSWORD:?}" "${PD_MECHS:?}"
  chmod 755 "$dir"
  pf_meta "$pf"
  local host="[${relayhost%:*}]:${relayhost##*:}"
  # The SMTP client reads its maps before it drops privileges: 0600 root.
  (umask 077
   printf '%s %s:%s\n' "$host" "$PD_USER" "$PD_PASSWORD" >"$pf/etc/sasl_passwd"
   printf '%s %s:%s\n' "$host" "$PD_USER" "$PD_WRONG_PASSWORD" >"$pf/etc/sasl_wrong")
  { pf_common_main "$pf" "postfix-client.interop.example"
    cat <<CONF
relayhost = $host
transport_maps = texthash:$pf/etc/transport
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:$pf/etc/sasl_passwd
# Over TLS every mechanism may be used, PLAIN and LOGIN included.
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
# A refused login is a temporary failure: the message stays queued.
smtp_sasl_auth_soft_bounce = yes
CONF
  } >"$pf/etc/main.cf"
  { pf_master_common
    : >"$pf/etc/transport"
    local mech lower
    for mech in $PD_MECHS; do
      lower=$(echo "$mech" | tr 'A-Z' 'a-z')
      echo "ar-$lower-13 unix - - n - - smtp -o smtp_sasl_mechanism_filter=$lower -o smtp_tls_protocols=>=TLSv1.3 -o smtp_tls_mandatory_protocols=>=TLSv1.3"
      echo "ar-$lower-12 unix - - n - - smtp -o smtp_sasl_mechanism_filter=$lower -o smtp_tls_protocols=<=TLSv1.2 -o smtp_tls_mandatory_protocols=<=TLSv1.2"
      echo "arwrong-$lower unix - - n - - smtp -o smtp_sasl_mechanism_filter=$lower -o smtp_sasl_password_maps=texthash:$pf/etc/sasl_wrong"
      printf '%s-13@interop.example ar-%s-13:%s\n' "$lower" "$lower" "$host" >>"$pf/etc/transport"
      printf '%s-12@interop.example ar-%s-12:%s\n' "$lower" "$lower" "$host" >>"$pf/etc/transport"
      printf 'wrong-%s@interop.example arwrong-%s:%s\n' "$lower" "$lower" "$host" >>"$pf/etc/transport"
    done
  } >"$pf/etc/master.cf"
  pf_start "$pf"
}

stop() {
  local dir=$1
  if [ -f "$dir/postfix/etc/main.cf" ]; then
    postfix -c "$dir/postfix/etc" stop >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/dovecot/dovecot.conf" ]; then
    doveadm -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 ||
      { [ -s "$dir/dovecot/run/master.pid" ] && kill "$(cat "$dir/dovecot/run/master.pid")" 2>/dev/null; } || true
  fi
  return 0
}

cmd=${1:?usage: postfix-dovecot.sh hub|client|stop DIR ...}
shift
case $cmd in
  hub | client | stop) "$cmd" "$@" ;;
  *) echo "postfix-dovecot.sh: unknown command $cmd" >&2; exit 2 ;;
esac
