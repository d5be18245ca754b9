#!/usr/bin/env bash
# `make soak`: the whole suite RUNS times in a row (10 unless given), each in a new random order, while a busy loop
# keeps every core loaded. Stops at the first red run and says its seed; prints each run's seed and time.
set -euo pipefail
runs=${RUNS:-10}
bin=${BIN:-.venv/bin}
busy=()
for _ in $(seq "$(nproc)"); do
    "$bin/python" -c 'while True: pass' &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
for run in $(seq "$runs"); do
    seed=$("$bin/python" -c 'import random; print(random.randrange(2**32))')
    started=$(date +%s)
    if ! "$bin/pytest" -q -n 2 -p no:cacheprovider --randomly-seed="$seed" > ".soak-$run.log" 2>&1; then
        tail -30 ".soak-$run.log"
        echo "run $run of $runs FAILED with --randomly-seed=$seed (full output in .soak-$run.log)"
        exit 1
    fi
    echo "run $run of $runs passed: seed $seed, $(( $(date +%s) - started )) s, $(tail -1 ".soak-$run.log")"
    rm -f ".soak-$run.log"
done
echo "$runs runs in a row passed under load, each in a random order."
