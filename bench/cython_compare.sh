#!/usr/bin/env bash
# mypyc against Cython (pure-Python mode) for the hot path (issue 11, BENCHMARKS.md): the same
# source, the same 24 modules (setup.py's COMPILED), no source change for either compiler.
#   bench/cython_compare.sh MYPYC_CLONE CYTHON_CLONE OUTDIR
# MYPYC_CLONE: a checkout whose .venv is the normal compiled build (scripts/venv).
# CYTHON_CLONE: a checkout; this script gives it a pure .venv (SHARDGEAR_PURE=1 scripts/venv),
# installs Cython there and cythonizes the COMPILED modules in place (the editable install then
# imports the Cython extensions). Then, in one run, alternating rounds: gearmand, shardgear
# compiled with mypyc, shardgear compiled with Cython (both 1 front x 1 shard, defaults), and
# bench.cpu_split of each build.
set -euo pipefail
mypyc_clone=$(cd "$1" && pwd); cy_clone=$(cd "$2" && pwd); out=$3; mkdir -p "$out"
cd "$cy_clone"
if [ ! -e shardgear/scheduler.c ]; then
    SHARDGEAR_PURE=1 scripts/venv --extra test >/dev/null
    .venv/bin/python -m pip install -q 'cython>=3.0'
    mapfile -t files < <(.venv/bin/python -c 'import re; print("\n".join(re.findall(r"\"(shardgear/[^\"]+\.py)\"", open("setup.py").read())))')
    .venv/bin/cythonize -i -j 2 -3 "${files[@]}" >"$out/cython-build.log" 2>&1
fi
.venv/bin/python -c 'import shardgear.scheduler as s; assert s.__file__.endswith(".so"), s.__file__'
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sd=$(mktemp -d)
.venv/bin/python -m shardgear --listen 127.0.0.1 --port "$port" --fronts 1 --shards 1 --state-dir "$sd" 2>/dev/null &
cy=$!
trap 'kill $cy 2>/dev/null; wait $cy 2>/dev/null; rm -rf "$sd"' EXIT
sleep 3
cd "$mypyc_clone"
py=$mypyc_clone/.venv/bin/python
run() { local name=$1; shift; echo "== $name: $*" | tee "$out/$name.txt"; "$py" -m bench.loadgen --no-progress "$@" 2>&1 | tee -a "$out/$name.txt" | tail -8; }
run fg-64B --compare gearmand shardgear:1x1 "127.0.0.1:$port@$cy" --rounds 5 --warmup 5000 -n 60000 -m fg
run bg-64B --compare gearmand shardgear:1x1 "127.0.0.1:$port@$cy" --rounds 5 --warmup 5000 -n 60000 -m bg
kill $cy; wait $cy 2>/dev/null || true
for round in 1 2; do
    "$py" -m bench.cpu_split --layouts 1x1 --rounds 2 -- -n 60000 2>&1 | tail -1 | sed 's/^/mypyc  /' | tee -a "$out/cpu-split.txt"
    (cd "$cy_clone" && .venv/bin/python -m bench.cpu_split --layouts 1x1 --rounds 2 -- -n 60000 2>&1 | tail -1 | sed 's/^/cython /' | tee -a "$out/cpu-split.txt")
done
