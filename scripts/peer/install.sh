# scripts/peer/install.sh — sourced by scripts/bench-peer.sh.
#
# peer_install: Postfix and Dovecot from Debian's packages, when missing,
# without letting the packages configure or start the machine's own mail
# system: postfix/main_mailer_type is preseeded to "No configuration" and a
# temporary /usr/sbin/policy-rc.d (exit 101) stops invoke-rc.d from
# starting anything. A policy-rc.d that was already there is left as it is.
# The benchmark never reads or writes /etc/postfix or /etc/dovecot beyond
# what the packages install: it runs private instances (scripts/peer/*.sh).
peer_install() {
  local need=()
  command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] || need+=(postfix)
  [ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
  [ ${#need[@]} -eq 0 ] && return 0
  echo "==> installing ${need[*]} from Debian's packages (no configuration, no services started)"
  if [ "$(id -u)" != 0 ]; then
    echo "bench-peer: installing ${need[*]} needs root" >&2
    return 1
  fi
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, scripts/bench-peer.sh: start no services\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"; } || rc=$?
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return "$rc"
}
