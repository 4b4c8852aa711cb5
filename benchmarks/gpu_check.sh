#!/usr/bin/env bash
# The GPU check (one H100/H200, no internet, at most 540 s of steps): install the carried wheels as the device
# tool's README says, then benchmarks/gpu_check.py, which appends every result to $OUT/gpu_results.jsonl (else
# docs/benchmarks/) as it exists and derives gpu_report.{md,png} from it last. Prepare first, with internet:
# bash benchmarks/gpu_prepare.sh. GPU_CARRY names the prepared folder (default .gpu_carry).
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # on the device: carry [".gpu_carry"]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
carry=${GPU_CARRY:-.gpu_carry}
site=/tmp/lit_sft_site
paths="$PWD"
if [ -d "$carry/wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$carry"/wheels/*.whl || { echo "gpu_check.sh: installing the carried wheels from $carry/wheels failed" >&2; exit 1; }
  paths="$PWD:$site"
else
  echo "gpu_check.sh: no $carry/wheels (bash benchmarks/gpu_prepare.sh makes it): the machine's own packages only" >&2
fi
export PYTHONPATH="$paths${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$carry/gsm8k" ] && LIT_SFT_GSM8K=$(cd "$carry/gsm8k" && pwd) && export LIT_SFT_GSM8K
exec python3 benchmarks/gpu_check.py "$@"
