#!/usr/bin/env bash
# One client downloading a 64 MiB file from nginx through Switchyard's L7
# listener, in the netns topology of scripts/netns.sh: MB/s for each pair of
# TCP buffer size and AF_PACKET port setting, two downloads each; then the
# same file straight from nginx, for scale. Switchyard runs pinned to CPU 1.
#
#   sudo bash bench/l7-download.sh [--seconds N]   (N bounds each download, default 20)
#
# L7_BUFFERS (default "6144 65536") and L7_NICS (default "af_packet:lb0,nogso
# af_packet:lb0,gso") choose the settings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"
bench_init l7-download dl- 20 1 "$@"
bin="$root/target/release/switchyard"
[ -x "$bin" ] || { echo "l7-download: build first: cargo build --release" >&2; exit 2; }
bench_topology
bench_backends
head -c $((64 << 20)) /dev/urandom > "$work/www/big.bin"
for nic in ${L7_NICS:-af_packet:lb0,nogso af_packet:lb0,gso}; do
    for b in ${L7_BUFFERS:-6144 65536}; do
        { switchyard_config "$nic" < /dev/null; printf '[tcp]\nbuffer_size = %s\n' "$b"; } > "$work/switchyard.toml"
        ip netns exec "${P}lb" taskset -c 1 "$bin" run --config "$work/switchyard.toml" > "$work/sy.out" 2>&1 &
        pid=$!
        sleep 1
        rates=""
        for _ in 1 2; do
            r=$(n cl curl -sS -m "$secs" -o /dev/null -w '%{speed_download}' http://198.18.0.10/big.bin || echo 0)
            rates="$rates $(echo "$r / 1000000" | bc) MB/s"
        done
        kill -INT "$pid"
        wait "$pid" || true
        echo "l7-download: $nic, buffer_size $b:$rates"
    done
done
r=$(n cl curl -sS -m "$secs" -o /dev/null -w '%{speed_download}' http://198.18.0.21:8080/big.bin)
echo "l7-download: straight from nginx: $(echo "$r / 1000000" | bc) MB/s"
