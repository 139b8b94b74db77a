#!/usr/bin/env bash
# Each NIC backend side by side: Switchyard on AF_PACKET (V2 frames and V3
# blocks), TAP, AF_XDP and DPDK (where this machine has them) in the netns
# topology of scripts/netns.sh, with HAProxy on the kernel stack as the peer.
# The same clients and nginx backends for all; the load balancer pinned to
# CPU 1, clients and backends to CPU 0; one candidate at a time, interleaved
# per round. Writes bench/NICS.md.
#
#   bash bench/nic-backends.sh [--seconds N] [--rounds R]     (root; default 5 s, 2 rounds)
#
# Measured per candidate: HTTP/1.1 keep-alive requests through an L7
# listener (wrk, 100 connections, 1 KiB bodies) and one TCP stream through
# an L4 full-NAT listener (iperf3), each with the load balancer's CPU time
# (utime + stime from /proc) during the run: requests per LB CPU-second and
# Gbit/s per LB CPU-second.
#
# A candidate `NIC xN` runs N workers (`workers = N`: AF_PACKET's fanout, or
# the software dispatcher on the other devices), all on the LB's one CPU.
# NICS="af_xdp:lb0;af_xdp:lb0 x2" measures only those (and HAProxy) and
# prints the table instead of writing bench/NICS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"
bench_init nic-backends nb- 5 2 "$@"
for c in haproxy wrk iperf3 taskset curl bc; do
    command -v "$c" >/dev/null || { echo "nic-backends: $c is not installed" >&2; exit 2; }
done

features=()
if pkg-config --exists libdpdk 2>/dev/null && grep -q '^dpdk' "$root/Cargo.toml"; then
    features=(--features dpdk)
fi
echo "nic-backends: building switchyard (release ${features[*]})"
(cd "$root" && cargo build --release -q --bin switchyard "${features[@]}")
sy=$root/target/release/switchyard
bench_topology
n lb ip addr add 198.18.0.11/24 dev br0
bench_backends 5201

haproxy_config > "$work/haproxy.cfg" <<EOF
listen tcp
  mode tcp
  bind 198.18.0.11:5201
  server i1 198.18.0.21:5201
EOF

# Switchyard's configuration for candidate $1: a device, and ` xN` for N workers.
sy_config() {
    local nic=$1 workers=1
    if [[ $1 =~ ^(.*)\ x([0-9]+)$ ]]; then
        nic=${BASH_REMATCH[1]} workers=${BASH_REMATCH[2]}
    fi
    switchyard_iperf_listener | switchyard_config "$nic" "$workers"
}

# The candidates: every backend this binary and machine can open.
nics=("af_packet:lb0" "af_packet:lb0,v3" "tap:tap0" "af_xdp:lb0"
    "dpdk:--no-huge --no-pci -m 512 --vdev=net_af_packet0,iface=lb0"
    "af_packet:lb0 x2" "tap:tap0 x2" "af_xdp:lb0 x2")
out_md=$root/bench/NICS.md
if [ -n "${NICS:-}" ]; then
    IFS=';' read -r -a nics <<<"$NICS"
    out_md=$work/NICS.md
fi
candidates=()
for nic in "${nics[@]}"; do
    sy_config "$nic" > "$work/check.toml"
    if "$sy" check --config "$work/check.toml" >/dev/null 2>&1; then
        candidates+=("$nic")
    else
        echo "nic-backends: skipping $nic: $("$sy" check --config "$work/check.toml" 2>&1 | tail -1)"
    fi
done
candidates+=(haproxy)

results="$work/results.tsv"
: > "$results"

start() {
    if [ "$1" = haproxy ]; then
        ip netns exec "${P}lb" taskset -c 1 haproxy -f "$work/haproxy.cfg" -db > "$work/lb.out" 2>&1 &
        vip=198.18.0.11
    else
        sy_config "$1" > "$work/switchyard.toml"
        ip netns exec "${P}lb" taskset -c 1 "$sy" run --config "$work/switchyard.toml" > "$work/lb.out" 2>&1 &
        vip=198.18.0.10
    fi
    lb_pid=$!
    for _ in $(seq 1 50); do
        n cl curl -sf -m 1 -o /dev/null "http://$vip/1k" && return 0
        sleep 0.2
    done
    echo "nic-backends: $1 does not answer:" >&2
    kill -TERM "$lb_pid" 2>/dev/null || true
    sleep 0.5
    cat "$work/lb.out" >&2
    return 1
}

stop() {
    kill -TERM "$lb_pid" 2>/dev/null || true
    wait "$lb_pid" 2>/dev/null || true
    # The kernel's neighbours forget the last candidate's MAC for the VIP.
    n cl ip neigh flush all
}

for r in $(seq 1 "$rounds"); do
    for c in "${candidates[@]}"; do
        start "$c" || continue
        c0=$(cpu "$lb_pid")
        out=$(n cl taskset -c 0 wrk -t1 -c100 -d"${secs}s" "http://$vip/1k")
        c1=$(cpu "$lb_pid")
        total=$(awk '/requests in/ { print $1 }' <<<"$out")
        errs=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
        l7_cpu=$(echo "$c1 - $c0" | bc)
        c0=$(cpu "$lb_pid")
        j=$(n cl taskset -c 0 iperf3 -c "$vip" -p 5201 -t "$secs" -J)
        c1=$(cpu "$lb_pid")
        bits=$(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bytes"] * 8)' <<<"$j")
        l4_cpu=$(echo "$c1 - $c0" | bc)
        stop
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$c" "$r" "$total" "$l7_cpu" "$bits" "$l4_cpu" "${errs:-}" >> "$results"
        echo "round $r $c: $total requests, LB CPU $l7_cpu s; $bits bits through L4, LB CPU $l4_cpu s ${errs:-}"
    done
done

python3 - "$results" "$secs" "$rounds" > "$out_md" <<'PY'
import sys, datetime, platform
path, secs, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
order, agg = [], {}
for c, r, total, l7cpu, bits, l4cpu, errs in rows:
    if c not in agg:
        order.append(c)
        agg[c] = [0.0, 0.0, 0.0, 0.0, []]
    a = agg[c]
    a[0] += float(total or 0); a[1] += float(l7cpu); a[2] += float(bits or 0); a[3] += float(l4cpu)
    if errs.strip():
        a[4].append(errs.strip())
def per_cpu(x, cpu):
    return x / cpu if cpu > 0 else float("nan")
base = agg.get(order[0]) if order else None
print("# NIC backends side by side\n")
print("Generated by `bash bench/nic-backends.sh --seconds %d --rounds %d` on %s UTC, Linux %s. "
      "One candidate at a time, pinned to CPU 1; wrk / iperf3 clients and nginx / iperf3 "
      "backends on CPU 0, in the namespaces of `scripts/netns.sh`; %d interleaved rounds of %d s "
      "per measurement, summed. Quote ratios: absolute rates move between runs on this VM.\n"
      % (secs, rounds, datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), platform.release(), rounds, secs))
print("| candidate | L7 requests/s | L7 requests per LB CPU-second | vs %s | L4 Gbit/s | L4 Gbit per LB CPU-second | errors |" % (order[0] if order else "-"))
print("|---|---:|---:|---:|---:|---:|---|")
for c in order:
    a = agg[c]
    eff = per_cpu(a[0], a[1])
    ratio = eff / per_cpu(base[0], base[1]) if base else float("nan")
    print("| `%s` | %.0f | %.0f | %.2f× | %.2f | %.2f | %s |" % (
        c, a[0] / (secs * rounds), eff, ratio, a[2] / (secs * rounds) / 1e9,
        per_cpu(a[2] / 1e9, a[3]), "; ".join(a[4]) or "none"))
print("\nSwitchyard busy-polls its device while traffic flows, so its CPU time is close to the "
      "run's length whatever the load; HAProxy sleeps in epoll between events.")
PY
[ "$out_md" = "$root/bench/NICS.md" ] && echo "nic-backends: wrote bench/NICS.md"
cat "$out_md"
