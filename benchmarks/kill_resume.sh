#!/usr/bin/env bash
# kill -9 halfway through a 397,000-weight construction (784-500-10, n = 21), run the same
# command again, and compare the ticket with an uninterrupted single-process run.
#   bash benchmarks/kill_resume.sh [WORKDIR]
set -euo pipefail
W=${1:-slth-kill-resume}
rm -rf "$W" && mkdir -p "$W" && cd "$W"
python -c "from slth.targets import synthetic_exp1_target as t; t().save('exp1.safetensors')"
CMD=(slth construct exp1.safetensors --n 21 --workers 2 --runs-dir runs)

/usr/bin/time -f "uninterrupted single process: %e s" slth construct exp1.safetensors --n 21 --out reference > reference.txt

setsid "${CMD[@]}" > first.txt 2>&1 &
PID=$!
TOTAL=7   # chunks of the plan (6 of layer 1, 1 of layer 2)
T0=$(date +%s.%N)
until [ "$(ls runs/*/chunks/*.npz 2>/dev/null | wc -l)" -ge $((TOTAL / 2)) ]; do sleep 0.2; done
CHILDREN=$(pgrep -P "$PID" | tr '\n' ' ')
kill -9 "$PID"
echo "killed the client with kill -9 after $(ls runs/*/chunks/*.npz | wc -l) of $TOTAL chunks, $(echo "$(date +%s.%N) - $T0" | bc) s"
sleep 3
LEFT=0; for c in $CHILDREN; do kill -0 "$c" 2>/dev/null && LEFT=$((LEFT + 1)); done
echo "child processes of the killed client (Dask workers): $(echo $CHILDREN | wc -w), still alive 3 s later: $LEFT"

/usr/bin/time -f "resumed run: %e s" "${CMD[@]}" > second.txt
grep -E "chunks computed now|not recomputed" second.txt
grep -cE "chunk L.* computed" runs/*/run.log | sed 's/^/chunk computations in the log (both attempts): /'
cmp reference/ticket.safetensors runs/*/ticket.safetensors && echo "ticket byte-identical to the uninterrupted run"
sha256sum reference/ticket.safetensors runs/*/ticket.safetensors

# A lost worker: kill -9 one Dask worker process mid-run; Dask restarts it, reruns its chunk, and
# the run finishes by itself.
slth construct exp1.safetensors --n 21 --workers 2 --runs-dir runs-lost-worker > lost.txt 2>&1 &
PID=$!
until [ "$(ls runs-lost-worker/*/chunks/*.npz 2>/dev/null | wc -l)" -ge 2 ]; do sleep 0.2; done
WORKER=$(pgrep -P "$PID" -f spawn_main | head -1)
kill -9 "$WORKER" && echo "killed Dask worker process $WORKER with kill -9 after 2 of $TOTAL chunks"
wait "$PID" && echo "run with a lost worker finished (exit 0)"
grep -E "chunks computed now" lost.txt
echo "worker addresses in its log: $(grep -oE 'on tcp://[0-9.:]+' runs-lost-worker/*/run.log | sort -u | wc -l)"
cmp reference/ticket.safetensors runs-lost-worker/*/ticket.safetensors && echo "ticket byte-identical to the uninterrupted run"
