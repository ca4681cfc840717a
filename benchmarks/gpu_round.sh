#!/usr/bin/env bash
# The set-up of a round on a GPU machine: installs the FlashMLA anchor if its wheel was carried in .whl/,
# puts it and this checkout on PYTHONPATH, and prints the card and versions. Source it, then run the
# round's commands (docs/next-gpu-round.md):  source benchmarks/gpu_round.sh; python3 -m pytest -m gpu ...
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
