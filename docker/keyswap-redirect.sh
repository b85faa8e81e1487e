#!/bin/sh
# keyswap-redirect: run once, as root with CAP_NET_ADMIN, in the network namespace the agent
# and keyswap share (a compose service with network_mode "service:keyswap", a Kubernetes
# init container). Afterwards every TCP connection any process other than keyswap opens to
# a non-loopback address arrives at keyswap's transparent listener, UDP (QUIC, and any other
# datagram) is dropped except DNS queries to the resolvers in /etc/resolv.conf, and IPv6
# leaves only over loopback.
#
#   keyswap-redirect [rules|trust|all]     (default: all)
#
#   rules: the iptables rules below.
#     KEYSWAP_UID        keyswap's UID, the only one whose traffic leaves as it is (65532)
#     TRANSPARENT_PORT   keyswap's transparent.listen port on 127.0.0.1 (15001)
#   trust: the agent's trust files, once keyswap has created its CA (no privilege needed).
#     KEYSWAP_CA         keyswap's CA certificate (<ca_dir>/ca.pem)
#     TRUST_BUNDLE       where to write the system roots plus that CA; keyswap-ca.pem (the CA
#                        alone, for NODE_EXTRA_CA_CERTS) is written next to it
#   all: rules, then trust if KEYSWAP_CA and TRUST_BUNDLE are set (compose: keyswap is
#        already up, so its CA exists).
#
# The rules match on the sending UID, so the agent must never run as KEYSWAP_UID and must
# hold neither CAP_NET_ADMIN (it could delete the rules) nor CAP_SETUID (it could become
# KEYSWAP_UID). The compose file and the Kubernetes manifest show both.
set -eu

mode="${1:-all}"
case "$mode" in rules | trust | all) ;; *) echo "usage: keyswap-redirect [rules|trust|all]" >&2; exit 2 ;; esac

write_trust() {
  if [ ! -s "$KEYSWAP_CA" ]; then
    echo "keyswap-redirect: $KEYSWAP_CA is missing or empty (is keyswap up?)" >&2
    exit 1
  fi
  cat /etc/ssl/certs/ca-certificates.crt "$KEYSWAP_CA" > "$TRUST_BUNDLE.tmp"
  chmod 0644 "$TRUST_BUNDLE.tmp"
  mv "$TRUST_BUNDLE.tmp" "$TRUST_BUNDLE"
  cp "$KEYSWAP_CA" "$(dirname "$TRUST_BUNDLE")/keyswap-ca.pem.tmp"
  chmod 0644 "$(dirname "$TRUST_BUNDLE")/keyswap-ca.pem.tmp"
  mv "$(dirname "$TRUST_BUNDLE")/keyswap-ca.pem.tmp" "$(dirname "$TRUST_BUNDLE")/keyswap-ca.pem"
  echo "keyswap-redirect: wrote $TRUST_BUNDLE (system roots + keyswap's CA)"
}

if [ "$mode" = trust ]; then
  : "${KEYSWAP_CA:?set KEYSWAP_CA}" "${TRUST_BUNDLE:?set TRUST_BUNDLE}"
  write_trust
  exit 0
fi

KEYSWAP_UID="${KEYSWAP_UID:-65532}"
TRANSPARENT_PORT="${TRANSPARENT_PORT:-15001}"

case "$KEYSWAP_UID" in '' | *[!0-9]*) echo "KEYSWAP_UID must be a number" >&2; exit 2 ;; esac
case "$TRANSPARENT_PORT" in '' | *[!0-9]*) echo "TRANSPARENT_PORT must be a number" >&2; exit 2 ;; esac

# The resolvers the agent may query over UDP/TCP 53 (DNS answers are only compared by
# keyswap, which resolves names itself; the query itself is a channel, see the README).
resolvers=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ { print $2 }' /etc/resolv.conf 2>/dev/null || true)

# --- IPv4: NAT (redirect) ---------------------------------------------------------------
iptables -t nat -N KEYSWAP_OUTPUT
# keyswap's own connections to the real upstreams leave unchanged.
iptables -t nat -A KEYSWAP_OUTPUT -m owner --uid-owner "$KEYSWAP_UID" -j RETURN
# Loopback stays local: keyswap's explicit listener, metrics, the runtime's DNS stub.
iptables -t nat -A KEYSWAP_OUTPUT -d 127.0.0.0/8 -j RETURN
for ns in $resolvers; do
  iptables -t nat -A KEYSWAP_OUTPUT -p tcp -d "$ns" --dport 53 -j RETURN
done
# Every other TCP connection, to any port: keyswap reads the original destination and
# refuses ports its config does not list (audited as port_not_allowed).
iptables -t nat -A KEYSWAP_OUTPUT -p tcp -j REDIRECT --to-ports "$TRANSPARENT_PORT"
iptables -t nat -A OUTPUT -p tcp -j KEYSWAP_OUTPUT

# --- IPv4: filter (what cannot be redirected is dropped) --------------------------------
iptables -N KEYSWAP_FILTER
iptables -A KEYSWAP_FILTER -m owner --uid-owner "$KEYSWAP_UID" -j RETURN
iptables -A KEYSWAP_FILTER -o lo -j RETURN
iptables -A KEYSWAP_FILTER -d 127.0.0.0/8 -j RETURN
for ns in $resolvers; do
  iptables -A KEYSWAP_FILTER -p udp -d "$ns" --dport 53 -j RETURN
  iptables -A KEYSWAP_FILTER -p tcp -d "$ns" --dport 53 -j RETURN
done
# QUIC (UDP 443) and every other datagram: HTTP/3 would otherwise bypass keyswap.
iptables -A KEYSWAP_FILTER -p udp -j DROP
# Anything else that is not TCP (ICMP data channels, SCTP, raw protocols).
iptables -A KEYSWAP_FILTER ! -p tcp -j DROP
iptables -A OUTPUT -j KEYSWAP_FILTER

# --- IPv6: nothing but loopback for anyone but keyswap ----------------------------------
# keyswap's transparent listener is bound to 127.0.0.1; rather than redirect IPv6, refuse it,
# so a client falls back to IPv4 (and through keyswap).
if [ -e /proc/net/if_inet6 ]; then
  ip6tables -N KEYSWAP_FILTER
  ip6tables -A KEYSWAP_FILTER -m owner --uid-owner "$KEYSWAP_UID" -j RETURN
  ip6tables -A KEYSWAP_FILTER -o lo -j RETURN
  ip6tables -A KEYSWAP_FILTER -p tcp -j REJECT --reject-with tcp-reset
  ip6tables -A KEYSWAP_FILTER -j DROP
  ip6tables -A OUTPUT -j KEYSWAP_FILTER
fi

echo "keyswap-redirect: TCP of every UID but $KEYSWAP_UID -> 127.0.0.1:$TRANSPARENT_PORT; UDP dropped except DNS to: ${resolvers:-none}"

# --- the agent's trust bundle -----------------------------------------------------------
if [ -n "${KEYSWAP_CA:-}" ] && [ -n "${TRUST_BUNDLE:-}" ] && [ "$mode" = all ]; then
  write_trust
fi
