#!/usr/bin/env bash
# One round on a GPU machine: install the FlashMLA anchor if carried, GPU tests, then benchmarks.
# Usage: bash benchmarks/gpu_round.sh "<pytest -k expression>" "<bench/tune commands>"; logs go to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/openmla-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/anchor .whl/*.whl && export PYTHONPATH=/tmp/anchor
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
