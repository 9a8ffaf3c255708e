#!/usr/bin/env bash
# On the GPU machine, after the bundle is staged: [BENCH_TIMEOUT=s] bench/gpu-run.sh NAME [bench.py options]
# Runs bench.py into /tmp/bench-NAME (stopped after BENCH_TIMEOUT seconds) and copies the tables,
# the batch-run stats and the log tails to $OUT/NAME, also after a timeout.
set -u
name=$1; shift
source /root/stage/env.sh
export PYTHONUNBUFFERED=1
timeout "${BENCH_TIMEOUT:-540}" python3 bench/bench.py --out /tmp/bench-$name "$@"
rc=$?
mkdir -p "$OUT/$name"
cp /tmp/bench-$name/results.json /tmp/bench-$name/results.md "$OUT/$name/" 2>/dev/null
tar -C /tmp/bench-$name -czf "$OUT/$name/parquet.tgz" $(cd /tmp/bench-$name && ls stats-*.parquet timeline-*.parquet 2>/dev/null) 2>/dev/null
for f in /tmp/bench-$name/log-*.txt; do tail -c 20000 "$f" > "/tmp/bench-$name/tail-$(basename "$f")"; done
tar -C /tmp/bench-$name -czf "$OUT/$name/logs.tgz" $(cd /tmp/bench-$name && ls tail-log-*.txt 2>/dev/null) 2>/dev/null
exit $rc
