#!/usr/bin/env bash
# Prepare, here (with PyPI), what benchmarks/gpu_check.sh needs on a GPU machine that has no internet: the wheels
# pinned in benchmarks/gpu_carry.txt (for the machine's Python, x86-64) and the GSM8K files, in .gpu_carry/
# (git-ignored; about 10 MB). Then on the device tool: run "bash benchmarks/gpu_check.sh" with carry [".gpu_carry"].
#
#   bash benchmarks/gpu_prepare.sh                              # Python 3.12 (the H200 machine's)
#   GPU_PYTHON=3.11 bash benchmarks/gpu_prepare.sh              # another Python there (the rehearsal's here)
#   GPU_EXTRA="pkg==1.0" bash benchmarks/gpu_prepare.sh         # more wheels, pinned exactly
#   GPU_CARRY=/elsewhere bash benchmarks/gpu_prepare.sh         # another folder (default .gpu_carry)
#
# The pins come from the committed list alone, never from what the python3 running this has installed: the
# wheels are for another machine. Every failure says what failed and exits non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
fail() { echo "gpu_prepare.sh: $*" >&2; exit 1; }

carry=${GPU_CARRY:-.gpu_carry}  # .gpu_carry is in .gitignore: it travels only where the device tool's carry names it
python=${GPU_PYTHON:-3.12}
limit_mb=${GPU_CARRY_LIMIT_MB:-64}  # the device tool carries at most 64 MiB per call, the working tree included
list=benchmarks/gpu_carry.txt
gsm8k=${LIT_SFT_GSM8K:-../shared/data/gsm8k}

python3 -m pip --version >/dev/null 2>&1 || fail "python3 ($(command -v python3 || echo 'not on PATH')) has no pip: install pip or put a python3 with pip first on PATH"
[ -f "$list" ] || fail "$list is missing"
for name in train.jsonl test.jsonl; do
  [ -f "$gsm8k/$name" ] || fail "GSM8K file $gsm8k/$name is missing (set LIT_SFT_GSM8K to the folder holding train.jsonl and test.jsonl)"
done

pins=()
while read -r line; do
  pin=${line%%#*}
  pin=${pin//[[:space:]]/}
  [ -z "$pin" ] && continue
  [[ $pin == *==* ]] || fail "$list: '$pin' is not an exact pin (name==version)"
  pins+=("$pin")
done <"$list"
read -r -a extra <<<"${GPU_EXTRA:-}"
for pin in "${extra[@]}"; do
  [[ $pin == *==* ]] || fail "GPU_EXTRA: '$pin' is not an exact pin (name==version)"
  pins+=("$pin")
done

rm -rf "$carry/wheels" && mkdir -p "$carry/wheels" "$carry/gsm8k" || fail "cannot create $carry/wheels"
platforms=()
# The machine's glibc is unread (the probe records it); its Python 3.12.3 is Ubuntu 24.04's (glibc 2.39). pip
# matches each manylinux tag exactly, so each is named.
for platform in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
  manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$platform")
done
for pin in "${pins[@]}"; do
  if ! output=$(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" \
    --implementation cp "${platforms[@]}" -d "$carry/wheels" "$pin" 2>&1); then
    fail "no wheel of $pin for Python $python on x86-64 (pip download said: $(echo "$output" | grep -v '^WARNING' | tail -2 | tr '\n' ' '))"
  fi
done

cp "$gsm8k/train.jsonl" "$gsm8k/test.jsonl" "$carry/gsm8k/" || fail "cannot copy the GSM8K files from $gsm8k"
ls "$carry/wheels"
size_kb=$(du -sk "$carry" | cut -f1)
[ "$size_kb" -le $((limit_mb * 1024)) ] || fail "$carry holds $((size_kb / 1024)) MiB, over the $limit_mb MiB the device tool carries"
echo "gpu_prepare.sh: ${#pins[@]} wheels for Python $python and the GSM8K files in $carry ($((size_kb / 1024)) MiB)"
