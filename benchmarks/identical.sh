#!/usr/bin/env bash
# Same ticket, whoever builds it: one construction run in this process, on 1 and on 2 Dask
# workers, and killed with kill -9 halfway then rerun; every ticket.safetensors must be the same
# bytes.
#   bash benchmarks/identical.sh WORKDIR TARGET [slth construct options...]
# e.g.
#   bash benchmarks/identical.sh orseau-n100 exp1.safetensors --method orseau --n 100 --domain box
#   bash benchmarks/identical.sh malach-digits digits16.safetensors --method malach --eps 1e-2
set -euo pipefail
W=$1; T=$(realpath "$2"); shift 2
rm -rf "$W" && mkdir -p "$W" && cd "$W"
build() {  # folder, extra options
    local d=$1; shift
    /usr/bin/time -f "%e s, peak %M KiB" slth construct "$T" "$@" --runs-dir "$d" > "$d.txt" 2> "$d.time" \
        || { cat "$d.txt" "$d.time"; exit 1; }
    echo "$d: $(tail -1 "$d.time")"
}
build local "$@"
build workers1 "$@" --workers 1
build workers2 "$@" --workers 2
TOTAL=$(python -c "import json, glob; print(json.load(open(glob.glob('local/*/report.json')[0]))['run']['chunks_total'])")
echo "chunks in the plan: $TOTAL"

setsid slth construct "$T" "$@" --workers 2 --runs-dir killed > killed-first.txt 2>&1 &
PID=$!
HALF=$(( (TOTAL + 1) / 2 ))
until [ "$(ls killed/*/chunks/*.npz 2>/dev/null | wc -l)" -ge "$HALF" ] || ! kill -0 $PID 2>/dev/null; do sleep 0.1; done
DONE=$(ls killed/*/chunks/*.npz 2>/dev/null | wc -l)
kill -9 -- -$PID 2>/dev/null || kill -9 $PID
echo "killed the run (kill -9, its whole process group) after $DONE of $TOTAL chunks"
sleep 2
build killed "$@" --workers 2
grep -E "chunks computed now" killed.txt || true

for d in workers1 workers2 killed; do
    cmp local/*/ticket.safetensors $d/*/ticket.safetensors && echo "$d: ticket byte-identical to the local run"
done
sha256sum local/*/ticket.safetensors workers1/*/ticket.safetensors workers2/*/ticket.safetensors killed/*/ticket.safetensors
