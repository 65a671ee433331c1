# Run B of BENCHMARKS.md "Issue 11: the targets met", as it was run: /tmp/perf was a clone at
# a3e92e0 with its .venv built (scripts/venv), /tmp/ci.NaSM a clone at c334f47 with its own.
set -u
out=/tmp/res-park
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sd=$(mktemp -d)
(cd /tmp/ci.NaSM && exec .venv/bin/python -m shardgear --listen 127.0.0.1 --port $port --fronts 1 --shards 1 --state-dir $sd) 2>/dev/null &
old=$!
sleep 3
cd /tmp/perf
for m in fg bg; do
  echo "== $m" | tee $out/$m.txt
  .venv/bin/python -m bench.loadgen --no-progress --compare gearmand shardgear:1x1 "127.0.0.1:$port@$old" --rounds 5 --warmup 5000 -n 100000 -m $m 2>&1 | tee -a $out/$m.txt | grep -A5 "^server"
done
kill $old; wait $old; rm -rf $sd
