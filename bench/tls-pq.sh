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
ip netns exec "${P}lb" taskset -c 1 "$root/target/release/switchyard" run --config "$work/switchyard.toml" > "$work/switchyard.out" 2>&1 &
sy_pid=$!
sleep 1
kill -0 "$sy_pid" 2>/dev/null || { echo "tls-pq: switchyard did not start" >&2; cat "$work/switchyard.out" >&2; exit 1; }
load() { n cl taskset -c 0 "$root/target/release/tls-load" --addr 198.18.0.10:443 --ca "$work/cert.pem" "$@"; }
load --group x25519 --connections 1 --seconds 1 --requests 5 | grep -q "errors 0 " ||
    { echo "tls-pq: switchyard does not answer over TLS" >&2; load --group x25519 --connections 1 --seconds 1 --requests 1 >&2; exit 1; }

results="$work/results.tsv"
: > "$results"
for r in $(seq 1 "$rounds"); do
    for g in x25519 x25519mlkem768; do
        c0=$(cpu "$sy_pid")
        out=$(load --group "$g" --connections 16 --seconds "$secs")
        c1=$(cpu "$sy_pid")
        read -r _ ok _ errs _ _ _ rate <<<"$(head -1 <<<"$out")"
        cpu_s=$(echo "$c1 - $c0" | bc)
        printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$g" "$r" "$ok" "$errs" "$rate" "$cpu_s" >> "$results"
        echo "round $r $g: $ok connections ($rate/s), $errs errors, LB CPU $cpu_s s"
        [ "$errs" = 0 ] || { echo "tls-pq: $out" >&2; kill -INT "$sy_pid"; wait "$sy_pid" || true; cat "$work/switchyard.out" >&2; exit 1; }
    done
done
kill -INT "$sy_pid"
wait "$sy_pid" || true
echo "tls-pq: the load balancer's count of handshakes by group:"
grep -i "handshake" "$work/switchyard.out" | grep -i "x25519" || grep -i "tls" "$work/switchyard.out" | head -5
grep -E "^(frames in|port: large frames)" "$work/switchyard.out" || true
echo
echo "group            connections  LB CPU s  per LB CPU-second  vs x25519"
awk -F'\t' '{ n[$1] += $3; c[$1] += $6 } END {
    b = n["x25519"] / c["x25519"]
    for (g in n) printf "%-16s %11d  %8.2f  %17.0f  %8.3f×\n", g, n[g], c[g], n[g] / c[g], (n[g] / c[g]) / b
}' "$results" | sort
