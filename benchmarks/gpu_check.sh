#!/usr/bin/env bash
# The GPU check (one H100/H200, no internet, about 9 minutes): install the carried wheels, run the GPU tests,
# then the benchmarks (benchmarks/gpu_check.py), which write docs/benchmarks/gpu.{md,json,png} (and copy them
# into $OUT when the device tool sets it). Prepare first, with internet: bash benchmarks/gpu_prepare.sh.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .gpu_carry/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lit_sft_site \
    .gpu_carry/wheels/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/lit_sft_site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d .gpu_carry/gsm8k ] && export LIT_SFT_GSM8K="$PWD/.gpu_carry/gsm8k"
log=${OUT:-/tmp}/gpu_pytest.log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# The GPU tests first; their result goes into the log and the report, and the benchmarks run either way.
timeout 180 python3 -m pytest tests/gpu -m gpu -q -x -p no:cacheprovider 2>&1 | tee "$log" | tail -25
python3 benchmarks/gpu_check.py "$@"
