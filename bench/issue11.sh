#!/usr/bin/env bash
# Issue 11 measurements (BENCHMARKS.md): gearmand vs shardgear (compiled, defaults, 1x1) vs the
# commit the issue was filed against (a checkout of 1516974 in $BASE, default /tmp/base; pure
# Python), in one run.
#   bench/issue11.sh CLONE OUTDIR    CLONE: a checkout whose .venv is built (scripts/venv)
set -uo pipefail
clone=$1; out=$2; mkdir -p "$out"
cd "$clone"
py=$clone/.venv/bin/python
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sd=$(mktemp -d)
(cd "${BASE:-/tmp/base}" && SHARDGEAR_PURE=1 exec python3 -m shardgear --listen 127.0.0.1 --port "$port" --fronts 1 --shards 1 --state-dir "$sd") 2>/dev/null &
base=$!
trap 'kill $base 2>/dev/null; wait $base 2>/dev/null; rm -rf "$sd"' EXIT
sleep 4
run() { local name=$1; shift; echo "== $name: $*" | tee "$out/$name.txt"; "$py" -m bench.loadgen --no-progress "$@" 2>&1 | tee -a "$out/$name.txt" | tail -25; }
run fg-64B --compare gearmand shardgear:1x1 "127.0.0.1:$port@$base" --rounds 5 --warmup 5000 -n 100000 -m fg
run bg-64B --compare gearmand shardgear:1x1 "127.0.0.1:$port@$base" --rounds 5 --warmup 5000 -n 100000 -m bg
kill $base; wait $base 2>/dev/null
run memory --compare gearmand shardgear:1x1 --memory 1000000
"$py" -m bench.cpu_split --layouts 1x1 --rounds 3 -- -n 60000 2>&1 | tee "$out/cpu-split.txt" | tail -8
