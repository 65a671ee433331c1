#!/usr/bin/env bash
# gearmand vs shardgear new ($NEW) vs old ($OLD), both compiled, both started the same way.
set -uo pipefail
out=${1:-/tmp/benchout}; mode=${2:-fg}; mkdir -p "$out"
# NEW, OLD: compiled checkouts (setup.py build_ext --inplace); PY: a python with the test extra
NEW=${NEW:?checkout of the new commit}; OLD=${OLD:?checkout of the old commit}
py=${PY:-python3}
fp() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(fp); p2=$(fp); sd1=$(mktemp -d); sd2=$(mktemp -d)
(cd "$NEW" && exec $py -m shardgear --listen 127.0.0.1 --port "$p1" --fronts 1 --shards 1 --state-dir "$sd1") 2>"$out/new.log" &
new=$!
(cd "$OLD" && exec $py -m shardgear --listen 127.0.0.1 --port "$p2" --fronts 1 --shards 1 --state-dir "$sd2") 2>"$out/old.log" &
old=$!
trap 'kill $new $old 2>/dev/null; wait $new $old 2>/dev/null; rm -rf "$sd1" "$sd2"' EXIT
sleep 4
cd "$NEW"
"$py" -m bench.loadgen --no-progress --compare gearmand "127.0.0.1:$p1@$new" "127.0.0.1:$p2@$old" --rounds 5 --warmup 5000 -n 100000 -m "$mode" 2>&1 | tee "$out/$mode.txt" | grep -E "^(server|gearmand|127)"
echo "new=127.0.0.1:$p1 old=127.0.0.1:$p2" | tee -a "$out/$mode.txt"
