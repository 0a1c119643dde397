"""Memory per GPU of a run before it is launched (``onestep distill --dry-run``).

Parameters are counted exactly on a skeleton of the teacher built from its configs on the meta
device (no weights read). Activations are measured there too: one forward with gradients at the
per-process batch, every tensor autograd saves for backward counted once (parameters excluded),
attention as the fused kernels keep it (q, k, v, output and the log-sum-exp, not the score
matrix). What is trained, and so held per network in fp32 (and divided by the process count
under ``train.sharding: fsdp``):

- weights of generator and fake score, Adam's two moments, the EMA copy: of the whole network,
  or of its LoRA adapter (``generator.lora`` / ``fake_score.lora``: the teacher's weights are then
  the only copy of the base);
- the frozen teacher in ``teacher.dtype`` (divided too with ``train.shard_teacher``), its VAE and
  text encoders (never sharded);
- activations: the graphs one step holds, the larger of the generator step (the generator with
  its regression pairs, the teacher (twice the batch under guidance) and fake score where the
  objective's gradient flows through them, the GAN term's feature network) and the fake-score
  step (the fake score on its denoising batch, plus generated and real batches for a
  fake-score discriminator; one pass of two batches when it shares their noise); with
  checkpointing, one block's activations recomputed at a time;
- gradients of one network at a time (each step frees them);
- FSDP: the all-gathered blocks in flight (the largest unit, current and prefetched, fp32).

Not counted: the CUDA context and kernels' workspace (~0.5-1 GiB), allocator fragmentation,
the teacher's transient no-grad activations, the discriminator head (a few MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..distill.plan import Plan
from ..errors import OnestepError
from ..nets import lora
from ..teachers import kinds

GIB = 2.0**30
LARGEST_GPU = 139 * GIB  # an H200 (141 GB): beyond it no single GPU runs the config
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# token lengths of the prompt embeddings the stock pipelines make (CLIP 77; SD3: 77 CLIP + 256 T5;
# PixArt-Sigma: 300 T5 tokens; Flux: 512 T5 tokens, CLIP only pooled)
TOKENS = {"UNet2DConditionModel": 77, "SD3Transformer2DModel": 77 + 256, "PixArtTransformer2DModel": 300,
          "FluxTransformer2DModel": 512}


@dataclass
class Estimate:
    """Bytes per GPU, by item, for ``processes`` processes (see the module docstring)."""

    rows: list[tuple[str, float]]
    processes: int
    local_batch: int
    denoiser_params: int

    @property
    def total(self) -> float:
        return sum(b for _, b in self.rows)

    def format(self) -> str:
        """YAML comment lines (the printed config stays valid YAML)."""
        lines = [f"# memory per GPU (estimate; {self.processes} process(es), {self.local_batch} samples each, "
                 f"denoiser {self.denoiser_params / 1e6:.1f}M parameters):"]
        lines += [f"#   {name:<46} {_size(b)}" for name, b in self.rows]
        lines.append(f"#   {'total':<46} {_size(self.total)}  (+ CUDA context, workspace, fragmentation)")
        if self.total > LARGEST_GPU:
            lines.append(f"# warning: more than one GPU holds ({_size(LARGEST_GPU).strip()} on an H200): lower "
                         f"train.batch_size, set train.gradient_checkpointing, or shard over more processes "
                         f"(train.sharding: fsdp)")
        return "\n".join(lines)


def _size(b: float) -> str:
    return f"{b / GIB:8.2f} GiB" if b >= GIB else f"{b / 2**20:8.1f} MiB"


class _FusedAttention(torch.autograd.Function):
    """What a flash / memory-efficient kernel saves: inputs, output and the row log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(*args, **kwargs):
    """``scaled_dot_product_attention`` called positionally or by keyword (diffusers' dispatcher)."""
    q, k, v = (list(args[:3]) + [kwargs.get(n) for n in ("query", "key", "value")[len(args[:3]):]])
    return _FusedAttention.apply(q, k, v)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _SavedTensors:
    """Collects what autograd saves (each tensor once, parameters excluded); a checkpointed region
    (``region``, the ``gradient_checkpointing_func`` diffusers calls) keeps only its inputs, and
    the largest region is recomputed in backward: its activations count once at the peak."""

    def __init__(self, params):
        self.skip = {id(p) for p in params}
        self.kept: dict[int, torch.Tensor] = {}  # ids stay unique: the tensors are kept alive
        self.largest_region = 0

    def _add(self, store: dict, t: torch.Tensor) -> None:
        base = t._base if t._base is not None else t
        if id(base) not in self.skip:
            store[id(base)] = base

    def pack(self, t):
        self._add(self.kept, t)
        return t

    def region(self, function, *args, **kwargs):
        for a in (*args, *kwargs.values()):
            if torch.is_tensor(a):
                self._add(self.kept, a)
        inner: dict[int, torch.Tensor] = {}

        def pack(t):
            self._add(inner, t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = function(*args, **kwargs)
        recomputed = [t for key, t in inner.items() if key not in self.kept]  # (its inputs are kept anyway)
        self.largest_region = max(self.largest_region, _tensor_bytes(recomputed))
        return out

    def measure(self, run) -> tuple[int, int]:
        """(bytes kept for backward, bytes of the largest checkpointed region) while ``run()`` runs."""
        sdpa = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
                run()
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
        return _tensor_bytes(self.kept.values()), self.largest_region


def _dummy_cond(unet: nn.Module, batch: int):
    """Meta conditioning of the shapes the stock pipelines feed ``unet`` (None: unconditional)."""
    name, cfg = type(unet).__name__, unet.config
    if name == "UNet2DModel":
        return torch.zeros(batch, dtype=torch.long) if cfg.get("num_class_embeds") else None
    if name == "DiTTransformer2DModel":
        return torch.zeros(batch, dtype=torch.long)
    if name == "UNet2DConditionModel":
        cond = {"encoder_hidden_states": torch.empty(batch, TOKENS[name], cfg.cross_attention_dim)}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            cond.update(text_embeds=torch.empty(batch, pooled), time_ids=torch.empty(batch, 6))
        return cond
    if name == "SD3Transformer2DModel":
        return {"encoder_hidden_states": torch.empty(batch, TOKENS[name], cfg.joint_attention_dim),
                "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim)}
    if name == "PixArtTransformer2DModel":
        return {"encoder_hidden_states": torch.empty(batch, TOKENS[name], cfg.caption_channels),
                "encoder_attention_mask": torch.ones(batch, TOKENS[name])}
    if name == "FluxTransformer2DModel":
        cond = {"encoder_hidden_states": torch.empty(batch, TOKENS[name], cfg.joint_attention_dim),
                "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim)}
        return {**cond, "guidance": torch.full((batch,), 3.5)} if cfg.guidance_embeds else cond
    raise OnestepError(f"no memory estimate for {name}")


def activation_bytes(network: nn.Module, batch: int, checkpointing: bool) -> tuple[int, int]:
    """(saved-for-backward bytes, bytes of the largest checkpointed region, recomputed in backward)
    of one fp32 forward of ``network`` (a Denoiser on the meta device) at ``batch`` samples;
    ``checkpointing``: with diffusers' gradient checkpointing (else the region is 0)."""
    saved = _SavedTensors(network.parameters())
    unet = getattr(network, "unet", None)
    if unet is None:  # an MLP denoiser: its own forward
        def run():
            x = torch.empty(batch, *network.sample_shape, device="meta", requires_grad=True)
            network(x, torch.ones(batch, device="meta"))
        return saved.measure(run)
    from ..portable.edm_form import call_unet

    if checkpointing:
        if not getattr(unet, "_supports_gradient_checkpointing", False):
            checkpointing = False
        else:
            unet.enable_gradient_checkpointing(saved.region)

    def run():
        with torch.device("meta"):
            x = torch.empty(batch, *network.sample_shape, requires_grad=True)
            call_unet(unet, x, torch.full((batch,), 500.0), _dummy_cond(unet, batch))
    try:
        return saved.measure(run)
    finally:
        if checkpointing:
            unet.disable_gradient_checkpointing()


def skeleton(config: Config) -> tuple[nn.Module, int]:
    """(the teacher's denoiser on the meta device, bytes of its other weighted components), from
    its kind's entry (``teachers.kinds``)."""
    t = config.teacher
    network, aux = kinds.get(t.kind).skeleton(t, config.network)
    return network, aux * DTYPE_BYTES[t.dtype]


def trained_parameters(network: nn.Module, config: Config) -> dict[str, int]:
    """Trained parameters of the generator and the fake score: the whole network, or the adapter
    their ``lora`` section puts on it (counted from the skeleton's layer shapes)."""
    out = {}
    for name in ("generator", "fake_score"):
        settings = getattr(config, name).lora.settings()
        if settings is None:
            out[name] = sum(p.numel() for p in network.parameters())
        else:
            out[name] = lora.count_parameters(network, settings)
    return out


def estimate(config: Config, processes: int) -> Estimate:
    """Per-GPU bytes of ``config`` run on ``processes`` processes (see the module docstring)."""
    tr = config.train
    if tr.batch_size % processes:
        raise OnestepError(f"config key 'train.batch_size': {tr.batch_size} is not divisible by {processes} processes")
    network, aux_bytes = skeleton(config)
    n = sum(p.numel() for p in network.parameters())
    sharded = tr.sharding == "fsdp" and processes > 1
    split = processes if sharded else 1
    local = tr.batch_size // processes
    kept, region = activation_bytes(network, local, tr.gradient_checkpointing)
    trained = trained_parameters(network, config)
    fp32 = {name: 4 * count / split for name, count in trained.items()}
    adapters = {name: getattr(config, name).lora.rank is not None for name in trained}
    networks = " + ".join(name.replace("_", " ") + (" LoRA" if adapters[name] else "") for name in trained)
    guidance_passes = 1 if getattr(network, "guidance", None) is not None else \
        kinds.get(config.teacher.kind).guidance_passes(config.teacher)  # (an embedded guidance: one pass)
    graphs = Plan.from_config(config).graph_batches(local, tr.batch_size, guidance_passes)
    # linear in the batch: the graphs' saved tensors together, one region recomputed at a time
    act = kept * sum(graphs) / local + region * max(graphs) / local
    if tr.mixed_precision != "no":
        act *= 0.5  # autocast: most saved tensors in 16 bits (normalisations stay fp32)
    shard_note = f" / {split}" if sharded else ""
    teacher_split = processes if sharded and tr.shard_teacher else 1
    rows = [
        (f"teacher weights ({config.teacher.dtype}{f' / {teacher_split}' if teacher_split > 1 else ''})",
         n * DTYPE_BYTES[config.teacher.dtype] / teacher_split),
        ("teacher VAE + text encoders", float(aux_bytes)),
        (f"{networks} (fp32{shard_note})", sum(fp32.values())),
        (f"gradients, one network at a time (fp32{shard_note})", max(fp32.values())),
        (f"Adam moments (2 x fp32{shard_note})", 2 * sum(fp32.values())),
        (f"EMA (fp32{shard_note})", fp32["generator"] if tr.ema_halflife_kimg > 0 else 0.0),
        (f"activations ({' + '.join(map(str, graphs))} samples{', checkpointed' if tr.gradient_checkpointing else ''}"
         f"{', ' + tr.mixed_precision if tr.mixed_precision != 'no' else ''})", act),
    ]
    if sharded:
        units = network.shard_units()
        largest = max((sum(p.numel() for p in u.parameters()) for u in units), default=n)
        rows.append(("FSDP all-gathered blocks (2 x largest unit)", 2 * 4 * largest))
    return Estimate(rows, processes, local, n)
