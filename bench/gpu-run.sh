#!/usr/bin/env bash
# On the GPU machine, after the bundle is staged: bench/gpu-run.sh NAME [bench.py options]
# Runs bench.py into /tmp/bench-NAME and copies the tables, stats and a tarball of logs to $OUT.
set -u
name=$1; shift
source /root/stage/env.sh
python3 bench/bench.py --out /tmp/bench-$name "$@"
rc=$?
mkdir -p "$OUT/$name"
cp /tmp/bench-$name/results.json /tmp/bench-$name/results.md /tmp/bench-$name/stats-*.parquet "$OUT/$name/" 2>/dev/null
tar -C /tmp/bench-$name -czf "$OUT/$name/logs.tgz" $(cd /tmp/bench-$name && ls log-*.txt)
exit $rc
