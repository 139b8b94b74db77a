#!/usr/bin/env bash
# What the post-quantum hybrid key exchange costs a load balancer per new TLS
# connection: Switchyard's HTTPS listener (pinned to CPU 1) in the netns
# topology of scripts/netns.sh, loaded by tls-load (rustls; the system's
# OpenSSL 3.0 offers no post-quantum group), every request on a new TLS 1.3
# connection (ECDSA P-256), offering X25519 only and then X25519MLKEM768 only,
# in turns. Prints new connections per LB CPU-second for each group and their
# ratio; the server-side handshake alone is counted by
# `bash bench/instructions.sh tls`.
#
#   sudo bash bench/tls-pq.sh [--seconds N] [--rounds R]   (default 5 s, 3 rounds)
#
# The rounds run twice: as fast as the client goes, and then with both groups
# offered one rate (80% of the hybrid's first figure; TPQ_RATE sets it).
#
# TPQ_PERF=PREFIX records each group's first round with `perf record -g` into
# PREFIX-GROUP.perf, for comparing where the hybrid's extra time goes;
# TPQ_BIN names the switchyard binary to run instead of the one built here
# (one built with RUSTFLAGS="-C force-frame-pointers=yes", for call chains).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"
bench_init tls-pq tpq- 5 3 "$@"
for c in nginx taskset; do
    command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] || {
        echo "tls-pq: $c is not installed (apt-get install nginx-light)" >&2
        exit 2
    }
done
echo "tls-pq: building switchyard and tls-load (release)"
(cd "$root" && cargo build --release -q --bin switchyard --bin tls-load)
bench_topology
bench_certificate
bench_backends

switchyard_https_listener | switchyard_config "${TPQ_NIC:-af_packet:lb0}" > "$work/switchyard.toml"
ip netns exec "${P}lb" taskset -c 1 "${TPQ_BIN:-$root/target/release/switchyard}" run --config "$work/switchyard.toml" > "$work/switchyard.out" 2>&1 &
sy_pid=$!
sleep 1
kill -0 "$sy_pid" 2>/dev/null || { echo "tls-pq: switchyard did not start" >&2; cat "$work/switchyard.out" >&2; exit 1; }
load() { n cl taskset -c 0 "$root/target/release/tls-load" --addr 198.18.0.10:443 --ca "$work/cert.pem" "$@"; }
load --group x25519 --connections 1 --seconds 1 --requests 5 | grep -q "errors 0 " ||
    { echo "tls-pq: switchyard does not answer over TLS" >&2; load --group x25519 --connections 1 --seconds 1 --requests 1 >&2; exit 1; }

results="$work/results.tsv"
: > "$results"
# measure PACE: each round offers X25519 and then X25519MLKEM768 (0: as fast
# as tls-load goes; otherwise that many connections a second).
measure() {
    local pace=$1 r g c0 c1 out ok errs rate cpu_s perf_pid
    for r in $(seq 1 "$rounds"); do
        for g in x25519 x25519mlkem768; do
            c0=$(cpu "$sy_pid")
            perf_pid=
            if [ -n "${TPQ_PERF:-}" ] && [ "$r" = 1 ] && [ "$pace" = 0 ]; then
                taskset -c 0 perf record -q -g -p "$sy_pid" -o "$TPQ_PERF-$g.perf" -- sleep "$secs" > /dev/null 2>&1 &
                perf_pid=$!
            fi
            out=$(load --group "$g" --connections 16 --seconds "$secs" --rate "$pace")
            [ -n "$perf_pid" ] && wait "$perf_pid"
            c1=$(cpu "$sy_pid")
            read -r _ ok _ errs _ _ _ rate <<<"$(head -1 <<<"$out")"
            cpu_s=$(echo "$c1 - $c0" | bc)
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$pace" "$g" "$r" "$ok" "$errs" "$rate" "$cpu_s" >> "$results"
            echo "round $r $g$([ "$pace" = 0 ] || echo " at $pace/s"): $ok connections ($rate/s), $errs errors, LB CPU $cpu_s s"
            if [ "$pace" != 0 ] && [ "$(echo "$rate < 0.98 * $pace" | bc)" = 1 ]; then
                echo "tls-pq: warning: $g reached only $rate of $pace connections a second; the paced figures do not compare equal loads (set TPQ_RATE lower)" >&2
            fi
            [ "$errs" = 0 ] || { echo "tls-pq: $out" >&2; kill -INT "$sy_pid"; wait "$sy_pid" || true; cat "$work/switchyard.out" >&2; exit 1; }
        done
    done
}
# As fast as the client goes: it is the bottleneck (on the other core, with
# the backends), and it makes fewer hybrid connections than X25519 ones, so
# the load balancer idles more between hybrid ones and pays more per
# connection for sleeping and waking.
measure 0
# Then both at one rate, 80% of the hybrid's, which both reach: what the
# hybrid itself costs.
pace=${TPQ_RATE:-$(awk -F'\t' '$2 == "x25519mlkem768" { s += $6; k++ } END { printf "%d", 0.8 * s / k }' "$results")}
echo "tls-pq: both groups paced at $pace connections a second"
measure "$pace"
kill -INT "$sy_pid"
wait "$sy_pid" || true
echo "tls-pq: the load balancer's count of handshakes by group:"
grep -i "handshake" "$work/switchyard.out" | grep -i "x25519" || grep -i "tls" "$work/switchyard.out" | head -5
grep -E "^(frames in|port: large frames)" "$work/switchyard.out" || true
echo
table() {
    awk -F'\t' -v p="$1" '$1 == p { n[$2] += $4; c[$2] += $7 } END {
        b = n["x25519"] / c["x25519"]
        for (g in n) printf "%-16s %11d  %8.2f  %17.0f  %8.3f×\n", g, n[g], c[g], n[g] / c[g], (n[g] / c[g]) / b
    }' "$results" | sort
}
echo "as fast as the client goes:"
echo "group            connections  LB CPU s  per LB CPU-second  vs x25519"
table 0
echo
echo "both offered $pace connections a second:"
echo "group            connections  LB CPU s  per LB CPU-second  vs x25519"
table "$pace"
