#!/usr/bin/env bash
# Instructions per packet of each l4-replay phase, counted by callgrind (these
# virtual machines expose no hardware counters to `perf stat`). Instruction
# counts do not depend on the machine's load, unlike times.
#
#   bash bench/instructions.sh [l4-replay options]   (default: --flows 100000 --packets 1000000 --churn 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--flows 100000 --packets 1000000 --churn 200000)
cargo build --release -q -p switchyard-bench --bin l4-replay
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
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
