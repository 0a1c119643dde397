"""Attention kernels behind one switch: ``auto | xformers | flash | efficient | math``.

Applied to every diffusers ``Attention`` module of a network (UNet2DModel has no
``set_attn_processor``, so the modules are walked). ``flash`` / ``efficient`` / ``math``
run PyTorch SDPA restricted to that kernel; ``xformers`` uses
``xformers.ops.memory_efficient_attention``. A backend that cannot run on the device
falls back with a warning (at selection, or per call for shapes a kernel rejects);
``math`` is the exact reference and always available.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("auto", "xformers", "flash", "efficient", "math")
_SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
log = logging.getLogger("onestep")
_announced: set[tuple] = set()


def _probe(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Can ``backend`` run forward and backward on ``device`` in ``dtype``?"""
    try:
        q = torch.randn(1, 2, 16, 32, device=device, dtype=dtype, requires_grad=True)
        if backend == "xformers":
            import xformers.ops as xops

            out = xops.memory_efficient_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2))
        else:
            with sdpa_kernel([_SDPA[backend]]):
                out = F.scaled_dot_product_attention(q, q, q)
        out.float().sum().backward()
        return True
    except Exception:  # any failure means "not available here"
        return False


def resolve(backend: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The backend that will run: ``auto`` picks the fastest available (flash, then
    efficient, then xformers, then math); an unavailable explicit choice falls back with a
    warning to what ``auto`` would pick."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (valid: {', '.join(BACKENDS)})")
    device = torch.device(device)
    if backend != "auto":
        if _probe(backend, device, dtype):
            return backend
        chosen = resolve("auto", device, dtype)
        warnings.warn(f"attention backend '{backend}' cannot run on {device.type} ({dtype}); using '{chosen}'",
                      stacklevel=2)
        return chosen
    order = ("flash", "efficient", "xformers") if device.type == "cuda" else ("flash",)
    chosen = next((b for b in order if _probe(b, device, dtype)), "math")
    key = (device.type, dtype, chosen)
    if key not in _announced:
        _announced.add(key)
        log.info("attention: auto chose '%s' on %s (%s)", chosen, device.type, dtype)
    return chosen


class KernelProcessor:
    """diffusers attention processor running SDPA under one kernel (or xformers).

    Falls back to the math kernel, warning once, for inputs the kernel rejects.
    """

    def __init__(self, backend: str):
        from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

        self.backend = backend
        self._inner = XFormersAttnProcessor() if backend == "xformers" else AttnProcessor2_0()
        self._math = AttnProcessor2_0()
        self._warned = False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        # explicit keywords: diffusers filters what a processor's signature does not name
        kwargs.update(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, temb=temb)
        try:
            if self.backend == "xformers":
                return self._inner(attn, hidden_states, *args, **kwargs)
            with sdpa_kernel([_SDPA[self.backend]]):
                return self._inner(attn, hidden_states, *args, **kwargs)
        except RuntimeError as exc:
            if self.backend == "math":
                raise
            if not self._warned:
                self._warned = True
                warnings.warn(f"attention '{self.backend}' rejected an input ({str(exc).splitlines()[0][:80]}); "
                              "using the math kernel for it", stacklevel=2)
            with sdpa_kernel([SDPBackend.MATH]):
                return self._math(attn, hidden_states, *args, **kwargs)


def attention_modules(module: torch.nn.Module) -> list:
    from diffusers.models.attention_processor import Attention

    return [m for m in module.modules() if isinstance(m, Attention)]


def apply_attention(modules, backend: str, device, dtype: torch.dtype = torch.float32) -> str:
    """Set one resolved backend on every attention layer of ``modules``; returns its name."""
    chosen = resolve(backend, device, dtype)
    processor = KernelProcessor(chosen)
    for module in modules:
        if module is None:
            continue
        for attn in attention_modules(module):
            attn.set_processor(processor)
    return chosen
