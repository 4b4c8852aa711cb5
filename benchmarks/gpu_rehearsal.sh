#!/usr/bin/env bash
# A rehearsal of the GPU check, here on CPU: a virtual environment with the GPU machine's package versions
# (docs/benchmarks/gpu.md lists them), the carried wheels installed ONLY as the device installs them (--no-index,
# --no-deps, --target, from benchmarks/gpu_prepare.sh's folder), then "gpu_check.sh --cpu-smoke" end to end
# under "timeout 600", as one device command would run.
#
#   bash benchmarks/gpu_rehearsal.sh          # about 1 minute of downloads (cached), a few of installing, then the check
#
# REHEARSAL_CACHE (default /work/cache/rehearsal) holds the downloaded wheels and the environment, reused while the
# pins below are unchanged. REHEARSAL_PYTHON picks the interpreter (default: python3.12 on the PATH, else pyenv's
# 3.12, else python3 with the nearest numpy; the log says which).
set -uo pipefail
cd "$(dirname "$0")/.."
fail() { echo "gpu_rehearsal.sh: $*" >&2; exit 1; }

# The GPU machine's versions (as read there in 2026-11; docs/benchmarks/gpu.md): torch 2.11.0 on Linux comes from the registry as its
# CUDA build (about 3.5 GB with its dependencies), which runs on a CPU.
device_pins=(torch==2.11.0 transformers==5.17.0 huggingface_hub==1.33.0 'pyarrow==21.*' lightning==2.6.6
  pytorch-lightning==2.6.6 torchmetrics==1.9.0 accelerate==1.15.0 tokenizers==0.23.2 safetensors==0.8.0
  peft pandas xxhash matplotlib pytest hypothesis
  # Also in the machine's image (its package list; versions not read there, so the newest that fit):
  # what datasets, TRL, lit_sft and the tests import beside the above.
  requests tqdm pyyaml psutil rich aiohttp jinja2 pillow tensorboard)
cache=${REHEARSAL_CACHE:-/work/cache/rehearsal}
find_python() {  # the GPU machine's Python 3.12: on the PATH, else pyenv's (whose shim may not select it)
  local candidate
  for candidate in "$(command -v python3.12)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 "$(command -v python3)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c '' 2>/dev/null && { echo "$candidate"; return; }
  done
}
python=${REHEARSAL_PYTHON:-$(find_python)}
[ -n "$python" ] && [ -x "$python" ] || fail "no Python interpreter found (set REHEARSAL_PYTHON)"
echo "gpu_rehearsal.sh: $python ($("$python" --version 2>&1))"
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# numpy 2.5.2 (the machine's) has wheels for Python 3.12+ only; the newest for an older Python stands in.
if [ "$version" = 3.12 ]; then device_pins+=(numpy==2.5.2); else device_pins+=(numpy==2.4.6); fi
[ "$version" = 3.12 ] || echo "gpu_rehearsal.sh: Python $version stands in for the GPU machine's 3.12 (no python3.12 here); numpy 2.4.6 for 2.5.2"
wheels=$cache/wheels-py$version venv=$cache/venv-py$version carry=$cache/carry-py$version out=$cache/out
stamp="${device_pins[*]}"
mkdir -p "$wheels" "$out"

if [ "$(cat "$wheels/.pins" 2>/dev/null)" != "$stamp" ]; then
  echo "== downloading the GPU machine's versions into $wheels"
  "$python" -m pip download -q --only-binary=:all: -d "$wheels" "${device_pins[@]}" || fail "pip download of the device's versions failed"
  echo "$stamp" >"$wheels/.pins"
fi
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$stamp" ]; then
  echo "== building $venv from those wheels alone"
  rm -rf "$venv" && "$python" -m venv "$venv" || fail "cannot create a virtual environment with $python"
  "$venv/bin/python" -m pip install -q --no-index --find-links "$wheels" "${device_pins[@]}" || fail "installing the device's versions failed"
  echo "$stamp" >"$venv/.pins"
fi
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|huggingface.hub|pyarrow|lightning|pytorch.lightning|torchmetrics|accelerate|tokenizers|safetensors|numpy|peft|pandas|triton|datasets|jsonargparse|trl)==' | tr '\n' ' '
echo

echo "== gpu_prepare.sh for Python $version"
GPU_PYTHON=$version GPU_CARRY=$carry bash benchmarks/gpu_prepare.sh | tail -1 || fail "gpu_prepare.sh failed"
"$venv/bin/python" -c 'import datasets' 2>/dev/null && fail "the environment has datasets: it must come from the carried wheels alone"

echo "== gpu_check.sh --cpu-smoke, as the device runs it (timeout 600)"
rm -rf "${out:?}"/* /tmp/lit_sft_site
started=$(date +%s)
PATH="$venv/bin:$PATH" OUT=$out GPU_CARRY=$carry timeout 600 bash benchmarks/gpu_check.sh --cpu-smoke >"$out/console.log" 2>&1
status=$?
echo "gpu_check.sh --cpu-smoke: exit $status after $(($(date +%s) - started)) s; its files in $out:"
ls -la "$out"
tail -40 "$out/console.log"
exit $status
