"""Forward+backward time and peak memory of a teacher-sized UNet per attention backend,
as ratios to the ``math`` kernel (the exact reference).

    python eval/bench_attention.py                         # DDPM-CIFAR-10 UNet, batch 8, CPU
    python eval/bench_attention.py --batch 64 --dtype bf16 # on a GPU

On CPU only ``math`` and ``flash`` run (``efficient`` and ``xformers`` fall back, and are
reported as such); peak memory is measured on CUDA only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch

from onestep import ATTENTION_BACKENDS as BACKENDS
from onestep import apply_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cifar_unet():
    from diffusers import UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    # diffusers warns on every `.to(dtype)` that "modules should be kept in float32: []",
    # listing none; the cast to the benchmark's dtype is the point here
    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256), norm_eps=1e-6, freq_shift=1,
                       flip_sin_to_cos=False, downsample_padding=0,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def measure(unet, backend: str, batch: int, device, dtype, repeats: int) -> dict:
    net = copy.deepcopy(unet).to(device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = apply_attention([net], backend, device, dtype)
    x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)

    def step():
        net.zero_grad(set_to_none=True)
        net(x, t).sample.float().square().mean().backward()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    fell_back = chosen != backend and backend != "auto"
    return {"backend": backend, "ran": chosen, "seconds": statistics.median(times), "peak_mib": peak,
            "fallback": fell_back or any("using the math kernel" in str(w.message) for w in caught)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    unet = cifar_unet()
    rows = [measure(unet, b, args.batch, device, dtype, args.repeats) for b in ["math"] + [b for b in BACKENDS if b != "math"]]
    ref = rows[0]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"DDPM-CIFAR-10 UNet fwd+bwd, batch {args.batch}, {args.dtype}, {name}")
    print(f"{'backend':10s} {'ran':10s} {'ms':>9s} {'time/math':>10s} {'peak MiB':>9s} {'mem/math':>9s}")
    for r in rows:
        mem = f"{r['peak_mib']:9.0f} {r['peak_mib'] / ref['peak_mib']:9.2f}" if r["peak_mib"] else f"{'-':>9s} {'-':>9s}"
        note = "  (fell back)" if r["fallback"] else ""
        print(f"{r['backend']:10s} {r['ran']:10s} {r['seconds'] * 1e3:9.1f} {r['seconds'] / ref['seconds']:10.2f} {mem}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
