#!/usr/bin/env bash
# Instruction counts, by callgrind (these virtual machines expose no hardware
# counters to `perf stat`). Instruction counts do not depend on the machine's
# load, unlike times.
#
#   bash bench/instructions.sh [l4-replay options]   per packet of each l4-replay phase
#                                                    (default: --flows 100000 --packets 1000000 --churn 200000)
#   bash bench/instructions.sh tls [--handshakes N]  per TLS 1.3 handshake on the server, by kind
#                                                    (tls-handshakes; default 200 of each)
#   bash bench/instructions.sh l7 [http|h2c] [CONNS] per proxied request: the load balancer's turns
#                                                    (Dataplane::poll) in l7-sim-bench at CONNS
#                                                    connections (default http, 10; 20,000 requests,
#                                                    MIN_REQUESTS to change), ramp included;
#                                                    CACHE=1 adds a cache simulation (48 KiB D1,
#                                                    4 MiB last level) and prints misses per request
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [ "${1:-}" = tls ]; then
  shift
  cargo build --release -q -p switchyard-bench --bin tls-handshakes
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect='tls_handshakes::flight_*' \
    target/release/tls-handshakes "$@" | tee "$out/stdout"
  callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null > "$out/annotate"
  n=$(awk '/^handshakes per kind:/ { print $4 }' "$out/stdout")
  base=
  for kind in full_x25519 full_x25519mlkem768 resumed_x25519 resumed_x25519mlkem768; do
    i=$(grep -m1 "tls_handshakes::flight_$kind " "$out/annotate" | awk '{gsub(",","",$1); print $1}')
    base=${base:-$i}
    awk -v p="$kind" -v i="$i" -v k="$n" -v b="$base" \
      'BEGIN { printf "instructions %-24s %12d / %5d handshakes = %9.0f per handshake (%.3f× full_x25519)\n", p, i, k, i / k, i / b }'
  done
  exit 0
fi

if [ "${1:-}" = l7 ]; then
  proto=${2:-http}
  conns=${3:-10}
  cargo build --release -q --bin l7-sim-bench
  cache=()
  [ "${CACHE:-0}" = 1 ] && cache=(--cache-sim=yes --D1=49152,12,64 --I1=32768,8,64 --LL=4194304,16,64)
  PROTOCOL=$proto MIN_REQUESTS=${MIN_REQUESTS:-20000} valgrind --tool=callgrind "${cache[@]}" \
    --callgrind-out-file="$out/cg" --toggle-collect='switchyard::worker::Dataplane::poll*' \
    target/release/l7-sim-bench "$conns" 2>/dev/null | tee "$out/stdout"
  req=$(awk -v n="$conns" '$1 == n { print $2 }' "$out/stdout")
  callgrind_annotate "$out/cg" 2>/dev/null > "$out/annotate"
  ins=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$out/annotate")
  awk -v p="$proto" -v n="$conns" -v i="$ins" -v r="$req" \
    'BEGIN { printf "instructions l7 %s at %d connections: %.0f / %d requests = %.0f per request\n", p, n, i, r, i / r }'
  if [ ${#cache[@]} -gt 0 ]; then
    # Columns: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
    awk -v r="$req" '/PROGRAM TOTALS/ { gsub(/\([^)]*\)/, ""); gsub(",", ""); $0 = $0;
      printf "per request: D1 misses %.1f (read %.1f, write %.1f), last-level misses %.1f (read %.1f, write %.1f)\n",
        ($5 + $6) / r, $5 / r, $6 / r, ($8 + $9) / r, $8 / r, $9 / r }' "$out/annotate"
  fi
  exit 0
fi

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--flows 100000 --packets 1000000 --churn 200000)
cargo build --release -q -p switchyard-bench --bin l4-replay
valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect='l4_replay::phase_*' \
  target/release/l4-replay "${args[@]}" | tee "$out/stdout"
callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null > "$out/annotate"
count() { grep -m1 "l4_replay::$1 " "$out/annotate" | awk '{gsub(",","",$1); print $1}'; }
new=$(grep -m1 '^new flows:' "$out/stdout" | awk '{print $3}')
est=$(grep -m1 '^established:' "$out/stdout" | awk '{print $2}')
churn=$(grep -m1 '^churn:' "$out/stdout" | awk '{print $2}')
for phase in "new_flows $new" "established $est" "churn $churn"; do
  set -- $phase
  n=$(count "phase_$1")
  awk -v p="$1" -v i="$n" -v k="$2" 'BEGIN { printf "instructions %-12s %12d / %9d packets = %6.0f per packet\n", p, i, k, i / k }'
done
