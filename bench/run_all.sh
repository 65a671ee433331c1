#!/usr/bin/env bash
# Every measurement quoted in BENCHMARKS.md, side by side with gearmand, in one run.
#   bench/run_all.sh [OUTDIR]        (default bench/results/<UTC date-time>)
# Needs gearmand (Debian gearman-job-server). Loopback only; every run is bounded by -n.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/$(date -u +%Y%m%dT%H%M)}
mkdir -p "$out"
bench() { python3 -m bench.loadgen --no-progress "$@"; }
run() { local name=$1; shift; echo "== $name: $*" | tee "$out/$name.txt"; bench "$@" 2>&1 | tee -a "$out/$name.txt"; }

SERVERS=(gearmand shardgear:1x1 shardgear:2x2)
R=(--rounds 5 --warmup 5000)
run fg-64B-16w      --compare "${SERVERS[@]}" "${R[@]}" -n 100000 -m fg
run bg-64B-16w      --compare "${SERVERS[@]}" "${R[@]}" -n 100000 -m bg
run fg-64K-16w      --compare "${SERVERS[@]}" "${R[@]}" -n 20000 -m fg -s 65536
run bg-64K-16w      --compare "${SERVERS[@]}" "${R[@]}" -n 20000 -m bg -s 65536
run fg-64B-1w       --compare "${SERVERS[@]}" "${R[@]}" -n 20000 -m fg -w 1
run bg-64B-1w       --compare "${SERVERS[@]}" "${R[@]}" -n 20000 -m bg -w 1
run coalesce        --compare "${SERVERS[@]}" "${R[@]}" -n 100000 -m fg -c 16 -i 25 -u coalesce --coalesce-share 0.8
run scaling         --compare gearmand --scaling 1x1 1x2 2x1 2x2 "${R[@]}" -n 100000 -m fg
run memory          --compare gearmand shardgear --memory 1000000

# The store's cost: the same background load with the store on and off.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m shardgear --listen 127.0.0.1 --port "$port" --fronts 1 --shards 1 --store none &
nostore=$!
trap 'kill $nostore 2>/dev/null || true' EXIT
sleep 2
run store-on-off    --compare shardgear:1x1 "127.0.0.1:$port@$nostore" "${R[@]}" -n 100000 -m bg
kill "$nostore"; wait "$nostore" || true

python3 -m bench.cpu_split --layouts 1x1 1x2 2x1 2x2 --rounds 3 -- -n 100000 2>&1 | tee "$out/cpu-split.txt"
echo "results in $out"
