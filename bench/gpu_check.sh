#!/usr/bin/env bash
# Every CUDA path in one go, meant to take under 8 minutes on one GPU: the CUDA tests, bench/train.py for
# every preset at 128 and 256 px, bench/convert.py at 1080p and 4K (and the CPU at 1080p beside it),
# bench/extract.py with the fan backend at 1080p, a 2-process DDP training run where the machine has 2 GPUs,
# and last bench/train.py again with torch.compile. Every figure goes into one JSON file, with each step's wall time. The first
# step that fails stops the check: its name is printed and recorded, and the exit status is 1.
#
#   bench/gpu_check.sh [--out gpu_check.json]    on a CUDA machine (see docs/gpu.md)
#   bench/gpu_check.sh --cpu-smoke               every step shrunk, on the CPU: proves the script itself
#
# PYTHON (default .venv/bin/python) picks the interpreter; STEP_LIMIT caps each step's seconds (default 420,
# or 1800 with --cpu-smoke, whose steps a busy CPU may slow a lot).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=gpu_check.json
SMOKE=0
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        *) echo "usage: bench/gpu_check.sh [--out FILE.json] [--cpu-smoke]" >&2; exit 2 ;;
    esac
done
if [ "$SMOKE" = 1 ]; then STEP_LIMIT=${STEP_LIMIT:-1800}; else STEP_LIMIT=${STEP_LIMIT:-420}; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1

# finish FAILED: gather every step's timing and figures from $WORK into $OUT.
finish() {
    "$PY" - "$WORK" "$OUT" "$1" "$SMOKE" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
work, out, failed, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] or None, sys.argv[4] == "1"
report = {"smoke": smoke, "failed": failed, "steps": {}}
for timing in sorted(work.glob("*.step"), key=lambda p: p.stat().st_mtime):
    name = timing.stem
    step = report["steps"][name] = json.loads(timing.read_text())
    if (work / f"{name}.json").is_file():
        step["figures"] = json.loads((work / f"{name}.json").read_text())
    elif (work / f"{name}.events").is_file():  # an engine verb's "done" event holds its summary
        lines = (work / f"{name}.events").read_text().splitlines()
        step["figures"] = next((json.loads(x) for x in reversed(lines) if '"event": "done"' in x), None)
    elif (work / f"{name}.xml").is_file():
        suite = ET.parse(work / f"{name}.xml").getroot().find("testsuite")
        step["figures"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
report["total_seconds"] = round(sum(s["seconds"] for s in report["steps"].values()), 1)
out.write_text(json.dumps(report, indent=1) + "\n")
print(f"gpu_check: {len(report['steps'])} steps, {report['total_seconds']} s; figures in {out}", file=sys.stderr)
EOF
}

# step NAME COMMAND...: run it under STEP_LIMIT; on failure, write what there is and stop, naming NAME.
step() {
    local name=$1
    shift
    echo "== $name: $*" >&2
    local started ms status
    started=$(date +%s%N)
    timeout --kill-after=10 "$STEP_LIMIT" bash -c '"$@"' "$name" "$@"  # bash, so that a step may be a function
    status=$?
    ms=$((($(date +%s%N) - started) / 1000000))
    printf '{"seconds": %d.%d, "exit": %d}\n' $((ms / 1000)) $((ms % 1000 / 100)) "$status" > "$WORK/$name.step"
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 124 ] && echo "gpu_check: step '$name' ran past ${STEP_LIMIT}s" >&2
        echo "gpu_check: FAILED at step '$name' (exit $status)" >&2
        finish "$name"
        exit 1
    fi
}

# The CUDA tests are those with "cuda" or "gpu" in their name; on a GPU none may skip.
cuda_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda or gpu" tests --junitxml "$WORK/cuda_tests.xml" || return 1
    if [ "$SMOKE" = 0 ] && grep -q "<skipped" "$WORK/cuda_tests.xml"; then
        echo "CUDA tests skipped on a CUDA machine" >&2
        return 1
    fi
}

machine() {
    "$PY" -m engine info --events > "$WORK/machine.events" || return 1
    [ "$SMOKE" = 1 ] || grep -q '"cuda": true' "$WORK/machine.events" || { echo "torch sees no CUDA GPU" >&2; return 1; }
}

export -f machine cuda_tests
export PY SMOKE WORK
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())") || exit 1
FACESETS=$WORK/facesets
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    TRAIN=(--presets tiny fast --sizes 64 --seconds 0.3 --no-reference)
    TRAIN_COMPILE=(--presets tiny --sizes 64 --seconds 0.3 --no-reference --compile)
    CONVERT=(--resolutions 480p --devices cpu --frames 3 --formats png16)
    CONVERT_CPU=()
    EXTRACT=(--backends fan --resolutions 480p --devices cpu --frames 2)
    DDP=(--nproc_per_node 2 -m engine train --device cpu --preset tiny --iterations 4)
else
    DEVICE=cuda
    TRAIN=(--sizes 128 256 --seconds 2)
    TRAIN_COMPILE=(--sizes 128 256 --seconds 2 --compile)
    CONVERT=(--resolutions 1080p 4k --devices cuda --preset quality --frames 48)
    CONVERT_CPU=(--resolutions 1080p --devices cpu --preset quality --frames 12)
    EXTRACT=(--backends fan --resolutions 1080p --devices cuda cpu --frames 16)
    DDP=(--nproc_per_node 2 -m engine train --device cuda --preset quality --iterations 60)
fi

step machine machine
step cuda_tests cuda_tests
step train "$PY" bench/train.py --device "$DEVICE" --facesets "$FACESETS" "${TRAIN[@]}" --json "$WORK/train.json"
step convert "$PY" bench/convert.py "${CONVERT[@]}" --json "$WORK/convert.json"
if [ ${#CONVERT_CPU[@]} -gt 0 ]; then
    step convert_cpu "$PY" bench/convert.py "${CONVERT_CPU[@]}" --json "$WORK/convert_cpu.json"
fi
step extract "$PY" bench/extract.py "${EXTRACT[@]}" --json "$WORK/extract.json"
if [ "$SMOKE" = 1 ] || [ "$GPUS" -ge 2 ]; then
    step ddp "$PY" -m torch.distributed.run --standalone "${DDP[@]}" --a "$FACESETS/faceset_a" \
        --b "$FACESETS/faceset_b" --model "$WORK/ddp_model" --events > "$WORK/ddp.events"
else
    echo "== ddp: skipped, $GPUS GPU" >&2
fi
# Last: compiling every preset is the step most likely to run past its limit, and it stops nothing after it.
step train_compile "$PY" bench/train.py --device "$DEVICE" --facesets "$FACESETS" "${TRAIN_COMPILE[@]}" \
    --json "$WORK/train_compile.json"
finish ""
