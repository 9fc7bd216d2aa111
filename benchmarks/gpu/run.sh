#!/usr/bin/env bash
# One command for the GPU benchmark (docs/gpu.md):
#
#   bash benchmarks/gpu/run.sh OUT_DIR [--tiny] [more gpu_bench.py options]
#
# Uses slimformer from this repository's src/ (installs nothing). The Python process has an
# internal deadline (--budget-s, default 420 s; --tiny 240 s) and this script an outer one
# (BENCH_TIMEOUT_S, default budget + 35 s, SIGINT then SIGKILL 10 s later); results are
# written after every item, and the table is rendered from whatever was written.
# PYTHON picks the interpreter (default: the repo's .venv if present, else python3).
set -u
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--tiny] [gpu_bench.py options]" >&2
    exit 2
fi
OUT_DIR=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT_DIR"

budget=420
case " $* " in *" --tiny "*) budget=240 ;; esac
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = "--budget-s" ] && [ $((i + 1)) -lt ${#args[@]} ]; then budget=${args[$((i + 1))]}; fi
done
outer=${BENCH_TIMEOUT_S:-$(( ${budget%.*} + 35 ))}

start=$(date +%s)
timeout --signal=INT --kill-after=10 "$outer" \
    "$PYTHON" "$HERE/gpu_bench.py" "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
rc=${PIPESTATUS[0]}
end=$(date +%s)
echo
"$PYTHON" "$HERE/gpu_bench.py" "$OUT_DIR" --render || rc=1
echo "run.sh: benchmark exit code $rc, wall $((end - start)) s; results in $OUT_DIR/gpu_bench.json and gpu_bench.md"
exit "$rc"
