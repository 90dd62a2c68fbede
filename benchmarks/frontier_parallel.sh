#!/usr/bin/env bash
# The dormancy frontier with its settings in parallel (one GPU shared, or many cores): the clean
# baseline first, then one process per setting, then one merged table (OUT/frontier.json,
# frontier.csv, frontier.png).
#
#   bash benchmarks/frontier_parallel.sh OUT SETTING[,SETTING...] [dormancy_frontier.py options]
#
# Each process's CPU work gets $THREADS threads (default 2); its log is OUT/par/SETTING.log.
set -euo pipefail
out=$1
settings=$2
shift 2
export OMP_NUM_THREADS=${THREADS:-2}
here=$(dirname "$0")
python3 "$here/dormancy_frontier.py" --out "$out" --clean-only -q "$@"
pids=()
for s in ${settings//,/ }; do
  mkdir -p "$out/par/$s"
  ln -sfn "$(realpath "$out/clean")" "$out/par/$s/clean"
  python3 "$here/dormancy_frontier.py" --out "$out/par/$s" --settings "$s" -q "$@" \
    >"$out/par/$s.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
done_dirs=()
for s in ${settings//,/ }; do
  if [ -f "$out/par/$s/frontier.json" ]; then done_dirs+=("$out/par/$s"); else
    echo "setting $s failed: see $out/par/$s.log" >&2; fi
done
[ ${#done_dirs[@]} -gt 0 ] && python3 "$here/dormancy_frontier.py" --out "$out" --merge "${done_dirs[@]}" "$@"
exit $status
