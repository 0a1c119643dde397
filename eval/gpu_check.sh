#!/usr/bin/env bash
# One prepared script for a GPU session (under 10 minutes on one H100/H200): runs the @cuda
# tests, the attention benchmark and the step benchmark in bf16 on the DDPM-CIFAR-10
# architecture, and prints images/second and peak GPU memory.
#
# The device image has torch but not diffusers or torch-fidelity, and no network. Prepare the
# wheels here first (x86_64, Python 3.12 on the device):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     diffusers==0.42.1 torch-fidelity==0.4.0
# then run it there with `.whl` carried:  bash eval/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"

echo "== @cuda tests"
timeout 180 python3 -m pytest -q -m cuda tests/test_attention.py 2>&1 | tee "$OUT/cuda_tests.txt" | tail -15

echo "== attention backends (DDPM-CIFAR-10 UNet fwd+bwd, batch 64, bf16)"
timeout 120 python3 eval/bench_attention.py --batch 64 --dtype bf16 2>&1 | tee "$OUT/bench_attention.txt"

echo "== one iteration vs its network passes (DDPM-CIFAR-10 architecture, batch 64, bf16)"
timeout 240 python3 eval/bench_step.py --arch ddpm-cifar10 --batch 64 --mixed-precision bf16 \
  --objectives dmd,sid,f_distill:js --repeats 5 2>&1 | tee "$OUT/bench_step.txt"
echo "results in $OUT"
