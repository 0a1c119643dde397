"""Attention kernels behind one switch: ``auto | xformers | flash | efficient | math``.

Applied to every diffusers ``Attention`` module of a network (UNet2DModel has no
``set_attn_processor``, so the modules are walked). ``flash`` / ``efficient`` / ``math``
run PyTorch SDPA restricted to that kernel; ``xformers`` uses
``xformers.ops.memory_efficient_attention``. A backend that cannot run on the device
falls back with a warning (at selection, or per call for shapes a kernel rejects);
``math`` is the exact reference and always available.
"""

from __future__ import annotations

import inspect
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
    """Wraps an attention layer's own diffusers processor (plain, joint (SD3), ...) so that its
    SDPA calls run under one kernel; ``xformers`` replaces the plain processor with diffusers'
    xformers one (other processors run under the memory-efficient SDPA kernel instead).

    Falls back to the math kernel, warning once, for inputs the kernel rejects.
    """

    def __init__(self, backend: str, original):
        from diffusers.models.attention_processor import XFormersAttnProcessor

        self.backend, self.original = backend, original
        self._inner = original
        self._kernels = [_SDPA.get(backend, SDPBackend.EFFICIENT_ATTENTION)]
        if backend == "xformers" and type(original).__name__ == "AttnProcessor2_0":
            self._inner, self._kernels = XFormersAttnProcessor(), None
        params = inspect.signature(self.original.__call__).parameters
        self._accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._names = set(params)
        self._warned = False

    def _kwargs(self, kwargs: dict) -> dict:
        return kwargs if self._accepts_any else {k: v for k, v in kwargs.items() if k in self._names}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        # explicit keywords: diffusers filters what a processor's signature does not name
        kwargs.update(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, temb=temb)
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("encoder_hidden_states", "attention_mask")}
        try:
            if self._kernels is None:
                return self._inner(attn, hidden_states, *args, **self._kwargs(kwargs))
            with sdpa_kernel(self._kernels):
                return self._inner(attn, hidden_states, *args, **self._kwargs(kwargs))
        except RuntimeError as exc:
            if self.backend == "math":
                raise
            if not self._warned:
                self._warned = True
                warnings.warn(f"attention '{self.backend}' rejected an input ({str(exc).splitlines()[0][:80]}); "
                              "using the math kernel for it", stacklevel=2)
            with sdpa_kernel([SDPBackend.MATH]):
                return self.original(attn, hidden_states, *args, **self._kwargs(kwargs))


def attention_modules(module: torch.nn.Module) -> list:
    from diffusers.models.attention_processor import Attention

    return [m for m in module.modules() if isinstance(m, Attention)]


def apply_attention(modules, backend: str, device, dtype: torch.dtype = torch.float32) -> str:
    """Set one resolved backend on every attention layer of ``modules``; returns its name."""
    chosen = resolve(backend, device, dtype)
    for module in modules:
        if module is None:
            continue
        for attn in attention_modules(module):
            original = attn.processor.original if isinstance(attn.processor, KernelProcessor) else attn.processor
            attn.set_processor(KernelProcessor(chosen, original))
    return chosen
