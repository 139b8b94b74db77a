#!/usr/bin/env bash
# Two Switchyard binaries, A and B, under the same load in alternating rounds
# (A B, B A, A B ...), each pinned to CPU 1 with the clients and nginx backends on
# CPU 0, in the netns topology of scripts/netns.sh: for judging a change on a
# machine too noisy for one run of each. Prints each round's requests (or
# connections) per LB CPU-second and B's mean over A's.
#
#   sudo bash bench/ab.sh A B [SCENARIO] [--seconds N] [--rounds R]   (default keepalive, 5 s, 3 rounds)
#
# SCENARIO: keepalive       wrk, 100 keep-alive connections, GET of 1 KiB via L7
#           h2-tls          h2load, HTTP/2 over TLS, 10 connections x 10 streams
#           https-new-conn  wrk, 16 connections, a new TLS connection per request
#           tcp-bulk        iperf3, one TCP stream through an L4 listener (MB per LB CPU-second)
# A and B are switchyard binaries, e.g. target/release/switchyard copied aside
# before and after a change. AB_NIC sets the port (default af_packet:lb0);
# AB_NIC_B, if set, B's port, for one binary with two port settings:
#   AB_NIC=af_packet:lb0,nogso AB_NIC_B=af_packet:lb0,gso sudo bash bench/ab.sh BIN BIN tcp-bulk
# AB_PERF=FILE records B's first measured round with `perf record -g` (on the
# clients' CPU) into FILE, for `perf report -i FILE`; build B with frame
# pointers (RUSTFLAGS="-C force-frame-pointers=yes") for whole call chains.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"
[ $# -ge 2 ] || { echo "usage: $0 A B [keepalive|h2-tls|https-new-conn|tcp-bulk] [--seconds N] [--rounds R]" >&2; exit 2; }
bin_a=$(realpath "$1")
bin_b=$(realpath "$2")
shift 2
scenario=keepalive
case "${1:-}" in
keepalive | h2-tls | https-new-conn | tcp-bulk) scenario=$1; shift ;;
esac
for b in "$bin_a" "$bin_b"; do
    [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }
done
bench_init ab ab- 5 3 "$@"
for c in nginx wrk h2load iperf3 taskset bc; do
    command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || {
        echo "ab: $c is not installed (apt-get install nginx-light wrk nghttp2-client iperf3 bc)" >&2
        exit 2
    }
done
bench_topology
bench_certificate
bench_backends 5201
{ switchyard_https_listener; switchyard_iperf_listener; } | switchyard_config "${AB_NIC:-af_packet:lb0}" > "$work/switchyard.toml"
sed "s|^nic = .*|nic = \"${AB_NIC_B:-${AB_NIC:-af_packet:lb0}}\"|" "$work/switchyard.toml" > "$work/switchyard-B.toml"
cp "$work/switchyard.toml" "$work/switchyard-A.toml"

# One load run of $secs seconds; prints the requests completed.
load() {
    local out
    case "$scenario" in
    keepalive)
        out=$(n cl taskset -c 0 wrk -t1 -c100 -d"$1s" http://198.18.0.10/1k)
        awk '/requests in/ { print $1 }' <<<"$out"
        ;;
    https-new-conn)
        out=$(n cl taskset -c 0 wrk -t1 -c16 -d"$1s" -H "Connection: close" https://198.18.0.10/1k)
        awk '/requests in/ { print $1 }' <<<"$out"
        ;;
    tcp-bulk)
        out=$(n cl taskset -c 0 iperf3 -c 198.18.0.10 -p 5201 -t "$1" -J)
        python3 -c 'import json, sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"] / 1e6))' <<<"$out"
        ;;
    h2-tls)
        out=$(n cl taskset -c 0 h2load -t1 -c10 -m10 -D "$1" https://198.18.0.10/1k 2>&1)
        awk '/^requests:/ { print $8 }' <<<"$out"
        ;;
    esac
}

unit=requests
[ "$scenario" = tcp-bulk ] && unit=MB
[ "$scenario" = https-new-conn ] && unit=connections
declare -A sum=([A]=0 [B]=0)
for r in $(seq 1 "$rounds"); do
    # A B, then B A: neither binary always runs first in its round, so an
    # advantage of running first (or second) cancels out over two rounds.
    # The same binary as A and B has measured 0.90 in one round.
    order="A B"
    [ $((r % 2)) = 0 ] && order="B A"
    for which in $order; do
        bin=$bin_a
        [ "$which" = B ] && bin=$bin_b
        ip netns exec "${P}lb" taskset -c 1 "$bin" run --config "$work/switchyard-$which.toml" \
            > "$work/switchyard-$which.out" 2>&1 &
        pid=$!
        sleep 1
        load 1 > /dev/null   # warm up: ARP, pools, the first handshakes
        c0=$(cpu "$pid")
        s0=$(sleeps "$pid")
        perf_pid=
        if [ -n "${AB_PERF:-}" ] && [ "$which" = B ] && [ "$r" = 1 ]; then
            taskset -c 0 perf record -q -g -p "$pid" -o "$AB_PERF" -- sleep "$secs" > /dev/null 2>&1 &
            perf_pid=$!
        fi
        req=$(load "$secs")
        [ -n "$perf_pid" ] && wait "$perf_pid"
        c1=$(cpu "$pid")
        s1=$(sleeps "$pid")
        kill -INT "$pid"
        wait "$pid" || true
        rate=$(echo "$req / ($c1 - $c0)" | bc)
        sum[$which]=$((sum[$which] + rate))
        echo "ab: round $r $which: $req $unit, LB CPU $(echo "$c1 - $c0" | bc) s, $rate per LB CPU-second, $(echo "scale=2; ($s1 - $s0) / $req" | bc) sleeps per one"
    done
done
echo "ab: $scenario, B / A = $(echo "scale=3; ${sum[B]} / ${sum[A]}" | bc) (means of $rounds rounds: A $((sum[A] / rounds)), B $((sum[B] / rounds)) per LB CPU-second)"
