#!/usr/bin/env bash
# The test topology on one Linux host, in network namespaces (nothing in the
# root namespace changes):
#
#   ${P}cl  eth0 198.18.0.101/24 ─┐
#                                  ├─ bridge br0 in ${P}lb ── lb0p ═ lb0   (Switchyard: af_packet:lb0)
#   ${P}be  eth0 198.18.0.21-23/24 ┘                        └── tap0        (Switchyard: tap:tap0)
#
# Switchyard runs inside ${P}lb (`ip netns exec ${P}lb switchyard run ...`) and
# owns 198.18.0.2 and its VIPs in user space; the kernel there holds no address.
# Transmit checksum offload is off on the clients' and backends' interfaces, so
# frames carry full checksums as from a real wire (a test turns it back on to
# see partial ones handled), and so is segmentation offload: frames fit a slot.
#
#   scripts/netns.sh up [PREFIX]     (default PREFIX: sy-)
#   scripts/netns.sh down [PREFIX]
set -euo pipefail

cmd=${1:-}
P=${2:-sy-}
LB=${P}lb CL=${P}cl BE=${P}be

down() {
    for ns in "$CL" "$BE" "$LB"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

up() {
    down
    ip netns add "$LB"
    ip netns add "$CL"
    ip netns add "$BE"
    local n="ip netns exec"
    # The kernel in the load balancer's namespace stays quiet on the wire.
    $n "$LB" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    $n "$LB" ip link add br0 type bridge
    $n "$LB" ip link set br0 type bridge forward_delay 0 stp_state 0
    $n "$LB" ip link set br0 up
    $n "$LB" ip link set lo up
    # Switchyard's AF_PACKET port and its bridge side.
    $n "$LB" ip link add lb0 type veth peer name lb0p
    $n "$LB" ip link set lb0p master br0 up
    $n "$LB" ip link set lb0 promisc on up
    # Switchyard's TAP port, persistent so the bridge can hold it.
    $n "$LB" ip tuntap add dev tap0 mode tap
    $n "$LB" ip link set tap0 master br0 up
    for ns in "$CL" "$BE"; do
        local side=${ns#"$P"}
        ip -n "$LB" link add "${side}x" type veth peer name eth0 netns "$ns"
        $n "$LB" ip link set "${side}x" master br0 up
        $n "$ns" ip link set lo up
        $n "$ns" ethtool -K eth0 tx off gso off >/dev/null 2>&1 || {
            echo "netns.sh: ethtool could not turn transmit checksum offload off" >&2
            exit 1
        }
        $n "$ns" ip link set eth0 up
    done
    $n "$CL" ip addr add 198.18.0.101/24 dev eth0
    $n "$CL" ip addr add 2001:2::101/64 dev eth0 nodad
    for a in 21 22 23; do
        $n "$BE" ip addr add "198.18.0.$a/24" dev eth0
        $n "$BE" ip addr add "2001:2::$a/64" dev eth0 nodad
    done
}

case "$cmd" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down [PREFIX]" >&2
    exit 2
    ;;
esac
