"""LoRA adapters on one frozen base network (peft), shared by the teacher, generator and fake score.

With ``generator.lora`` / ``fake_score.lora`` the teacher's network stays the only copy of the
base weights in memory: peft injects one adapter per trained network into it (``inject_adapter_in_model``,
B initialised to zero, so every adapter starts as the teacher), and an ``AdapterView`` is the
denoiser of one adapter. Outside a view's call every adapter is disabled, so the teacher's own
calls see the base weights alone. A view's parameters are its adapter's, nothing else: its
optimizer, EMA, checkpoint and gradient clipping see only them.

Adapters are switched by setting peft's per-layer ``_active_adapter`` / ``_disable_adapters``
(not ``set_adapter``/``enable_adapters``, which also rewrite ``requires_grad`` and would let the
generator step's gradients reach the fake score's adapter). LoRA of Hu et al. 2021
(arXiv 2106.09685): ``W x + (alpha / rank) B A x``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import OnestepError

# Per network family, the modules a LoRA adapts by default: every attention projection, the
# feed-forward and the convolutions of the residual blocks with their time projections
# (DMD2's SDXL LoRA adapts the same set of layer kinds).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj"]
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                       "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
DEFAULT_TARGETS = {
    "UNet2DModel": UNET_TARGETS,
    "UNet2DConditionModel": UNET_TARGETS,
    "SD3Transformer2DModel": TRANSFORMER_TARGETS,
    "FluxTransformer2DModel": TRANSFORMER_TARGETS + ["proj_mlp"],
    "DiTTransformer2DModel": TRANSFORMER_TARGETS,
    "PixArtTransformer2DModel": TRANSFORMER_TARGETS,
}
EXTRA = "pip install 'onestep[lora]' (peft)"


@dataclass(frozen=True)
class LoraSettings:
    """One adapter: ``rank`` r >= 1, ``alpha`` (scale alpha / r), ``target_modules`` (None: the
    family's defaults, ``DEFAULT_TARGETS``)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | None = None


def require_peft():
    try:
        import peft
    except ImportError:
        raise OnestepError(f"LoRA (generator.lora / fake_score.lora) needs peft: {EXTRA}") from None
    return peft


def _model(denoiser: nn.Module) -> nn.Module:
    """The diffusers model inside a denoiser, or a one-line refusal naming the family."""
    model = getattr(denoiser, "unet", None)
    if model is None or type(model).__name__ not in DEFAULT_TARGETS:
        family = type(model if model is not None else denoiser).__name__
        raise OnestepError(f"LoRA has no known target modules for the network {family} "
                           f"(families: {', '.join(DEFAULT_TARGETS)}); drop generator.lora / fake_score.lora")
    return model


def targets(denoiser: nn.Module, settings: LoraSettings) -> list[str]:
    """The target module names of ``settings`` on ``denoiser``: the given ones, else the family's
    defaults present in this network. Refused in one line when nothing matches."""
    model = _model(denoiser)
    wanted = list(settings.target_modules or DEFAULT_TARGETS[type(model).__name__])
    from peft.tuners.tuners_utils import BaseTunerLayer

    # plain layers, and layers that already carry an adapter (peft adds the next one to them)
    names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer) or (
        isinstance(m, (nn.Linear, nn.Conv2d)) and ".lora_" not in n and not n.endswith(".base_layer"))]
    present = [t for t in wanted if any(n == t or n.endswith("." + t) for n in names)]
    if settings.target_modules is not None and len(present) < len(wanted):
        missing = [t for t in wanted if t not in present]
        raise OnestepError(f"LoRA target_modules {missing} match no linear or conv layer of "
                           f"{type(model).__name__}; the defaults are {DEFAULT_TARGETS[type(model).__name__]}")
    if not present:
        raise OnestepError(f"LoRA: no default target module in this {type(model).__name__}; set target_modules")
    return present


def count_parameters(denoiser: nn.Module, settings: LoraSettings) -> int:
    """Parameters the adapter ``settings`` would add to ``denoiser`` (peft's layout: A (r, in[, k, k]),
    B (out, r[, 1, 1]), no bias), without injecting it: works on a meta-device skeleton."""
    wanted = targets(denoiser, settings)
    total = 0
    for name, module in _model(denoiser).named_modules():
        if not any(name == t or name.endswith("." + t) for t in wanted):
            continue
        r = settings.rank
        if isinstance(module, nn.Linear):
            total += r * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += r * (module.in_channels // module.groups) * k + module.out_channels * r
    return total


def tuner_layers(denoiser: nn.Module) -> list[nn.Module]:
    """The LoRA layers of ``denoiser`` (listed once per adapter injection, not per call)."""
    cached = denoiser.__dict__.get("_lora_layers")
    if cached is None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        cached = [m for m in _model(denoiser).modules() if isinstance(m, BaseTunerLayer)]
        denoiser.__dict__["_lora_layers"] = cached
    return cached


def is_adapter_parameter(name: str) -> bool:
    """True for a LoRA parameter (``...lora_A.<adapter>.weight``), false for a base weight."""
    return ".lora_" in name or name.startswith("lora_")


def add_adapter(denoiser: nn.Module, name: str, settings: LoraSettings, seed: int = 0) -> AdapterView:
    """Inject adapter ``name`` into ``denoiser`` (frozen, shared) and return its view. Every
    adapter stays disabled outside its view's calls; base weights keep ``requires_grad=False``.
    ``A``'s random initialisation is drawn from ``seed`` and the adapter's name, not from the global
    generator: every process of a run, and every run of a seed, starts from the same adapters."""
    peft = require_peft()
    model = _model(denoiser)
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=targets(denoiser, settings),
                             init_lora_weights=True)
    grads = {id(p): p.requires_grad for p in model.parameters()}
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several adapters: the point
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        peft.inject_adapter_in_model(config, model, adapter_name=name)
    denoiser.__dict__.pop("_lora_layers", None)  # (listed again on next use)
    with torch.no_grad():  # peft gives a new adapter its base layer's dtype: trained weights stay fp32
        for p in adapter_parameters(denoiser, name).values():
            p.data = p.data.float()
    for n, p in model.named_parameters():  # peft marks only the newest adapter trainable: restore the rest
        p.requires_grad_(grads.get(id(p), False) if not is_adapter_parameter(n) else
                         (f".{name}." in n or grads.get(id(p), False)))
    for layer in tuner_layers(denoiser):
        layer._disable_adapters = True  # the base (teacher) outside a view's call
    return AdapterView(denoiser, name)


@contextlib.contextmanager
def active(denoiser: nn.Module, name: str):
    """Within: adapter ``name`` of ``denoiser`` on, every other off; after: all off (the base)."""
    layers = tuner_layers(denoiser)
    for layer in layers:
        layer._active_adapter, layer._disable_adapters = [name], False
    try:
        yield
    finally:
        for layer in layers:
            layer._disable_adapters = True


def _state(layers) -> list:
    return [(layer._active_adapter, layer._disable_adapters) for layer in layers]


def _set_state(layers, state) -> None:
    for layer, (active_adapter, disabled) in zip(layers, state):
        layer._active_adapter, layer._disable_adapters = active_adapter, disabled


def checkpoint_function(denoiser: nn.Module):
    """A ``gradient_checkpointing_func`` for diffusers models carrying adapters: the block is
    recomputed in backward with the adapter state of its forward (by then the view's call has
    switched every adapter off). Signature of diffusers' default: ``(module, *args)``."""
    from torch.utils.checkpoint import checkpoint

    def run(module, *args):
        layers = tuner_layers(denoiser)
        state = _state(layers)

        def block(*inner):
            now = _state(layers)
            _set_state(layers, state)
            try:
                return module(*inner)
            finally:
                _set_state(layers, now)

        return checkpoint(block, *args, use_reentrant=False)

    return run


def enable_checkpointing(network: nn.Module) -> None:
    """Gradient checkpointing of ``network`` (a denoiser or an adapter view), adapter-aware where
    its base carries adapters."""
    base = network.__dict__.get("base", network)
    carries = any(is_adapter_parameter(n) for n, _ in base.named_parameters())
    base.enable_gradient_checkpointing(checkpoint_function(base) if carries else None)


def adapter_parameters(denoiser: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """peft's parameter names (``<module>.lora_A.<name>.weight``) -> parameters of adapter ``name``."""
    return {n: p for n, p in _model(denoiser).named_parameters() if is_adapter_parameter(n) and f".{name}." in n}


class AdapterView(nn.Module):
    """The denoiser ``base`` with adapter ``name`` on: ``forward`` as a ``Denoiser``'s; every other
    attribute (sample_shape, cond_kind, spec, pipeline_parts, ...) is the base's.

    Registered parameters: the adapter's alone (``adapter.<peft name without the adapter's name,
    '.' -> '/'>``), the same
    tensors the base's LoRA layers use. ``base`` is held outside the module tree: moving,
    saving or copying a view never touches the base weights; ``copy.deepcopy`` makes a new
    adapter on the same base (an EMA's copy).
    """

    def __init__(self, base: nn.Module, name: str):
        super().__init__()
        self.__dict__["base"] = base
        self.name = name
        # keys without the adapter's name: an EMA's copy has the generator's keys
        self.adapter = nn.ParameterDict({k.replace(f".{name}.", ".").replace(".", "/"): p
                                         for k, p in adapter_parameters(base, name).items()})

    def __getattr__(self, attr):
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.__dict__["base"], attr)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None, return_features: bool | str = False):
        with active(self.base, self.name):
            return self.base(x, sigma, cond, return_features=return_features)

    def __deepcopy__(self, memo):
        """A new adapter on the same base holding a copy of this one's weights."""
        base = self.__dict__["base"]
        carriers = _carriers(base, self.name)
        taken = set().union(*(m.lora_A.keys() for m in carriers))
        name = next(f"{self.name}_copy{i}" for i in itertools.count() if f"{self.name}_copy{i}" not in taken)
        first = carriers[0]
        settings = LoraSettings(first.r[self.name], first.lora_alpha[self.name],
                                tuple(n for n, m in _model(base).named_modules() if m in carriers))
        view = add_adapter(base, name, settings)
        with torch.no_grad():
            for key, mine in self.adapter.items():
                view.adapter[key].copy_(mine)
                view.adapter[key].requires_grad_(mine.requires_grad)
        memo[id(self)] = view
        return view


def _carriers(denoiser: nn.Module, name: str) -> list[nn.Module]:
    """The LoRA layers carrying adapter ``name``."""
    return [m for m in tuner_layers(denoiser) if name in m.lora_A]


def merged_copy(view: AdapterView) -> nn.Module:
    """A plain denoiser (no adapters) whose weights are the base's with ``view``'s adapter merged
    (``W + (alpha / r) B A``): what a full export writes."""
    base = copy.deepcopy(view.__dict__["base"]).float()  # merged in fp32, as a full run's weights are
    for layer in tuner_layers(base):
        if view.name in layer.lora_A:
            layer.merge(adapter_names=[view.name])
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _model(base)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, child_name, child.get_base_layer())
    base.__dict__.pop("_lora_layers", None)
    return base


def trainable(network: nn.Module) -> nn.Module:
    """The trainable network of a generator or fake score made from ``network``: an adapter view
    as it is (its adapter is its own; the base stays shared and frozen), else a full fp32 copy."""
    if isinstance(network, AdapterView):
        return network.train()
    copied = copy.deepcopy(network).float().train()
    for p in copied.parameters():
        p.requires_grad_(True)
    return copied
