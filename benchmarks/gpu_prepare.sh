#!/usr/bin/env bash
# Prepare, here (with PyPI), what benchmarks/gpu_check.sh needs on a GPU machine that has no internet: wheels
# of the packages its image lacks (for its Python, x86-64) and the GSM8K files, in .gpu_carry/ (git-ignored;
# about 10 MB). Then on the device tool: run "bash benchmarks/gpu_check.sh" with carry [".gpu_carry"].
#
#   bash benchmarks/gpu_prepare.sh                      # Python 3.12 (the H200 machine's)
#   GPU_PYTHON=3.11 bash benchmarks/gpu_prepare.sh      # another Python there
#
# Versions: those installed here where installed (what this checkout is tested with), else the latest;
# TRL_VERSION / LIGER_VERSION pin those two (they must suit the machine's transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu_carry  # in .gitignore: it travels only where the device tool's carry names it
rm -rf "$carry/wheels" && mkdir -p "$carry/wheels" "$carry/gsm8k"

python=${GPU_PYTHON:-3.12}
pins=()
for name in datasets jsonargparse omegaconf dill multiprocess docstring-parser typeshed-client; do
  version=$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
  pins+=("$name${version:+==$version}")
done
pins+=("trl${TRL_VERSION:+==$TRL_VERSION}" "liger-kernel${LIGER_VERSION:+==$LIGER_VERSION}")
# GPU_EXTRA adds wheels, e.g. GPU_EXTRA="pyarrow==26.0.1" where the machine's pyarrow is older than datasets needs.
read -r -a extra <<<"${GPU_EXTRA:-}"
pins+=("${extra[@]}")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/wheels" "${pins[@]}"

gsm8k=${LIT_SFT_GSM8K:-../shared/data/gsm8k}
cp "$gsm8k/train.jsonl" "$gsm8k/test.jsonl" "$carry/gsm8k/"
ls "$carry/wheels"
du -sh "$carry"
