"""Export a run's generator as a diffusers pipeline directory (``onestep export``).

The directory holds ``save_pretrained`` output (safetensors) and a self-contained
``pipeline.py`` named in ``model_index.json``, so that both
``OneStepPipeline.from_pretrained(dir)`` and
``diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` load it, the
second without ``onestep`` installed. Where the generator is exactly a stock 1-step sampler
(a VP teacher distilled at its largest sigma) it also writes that scheduler under
``stock_scheduler/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .core.io import safetensors_header, write_pipeline_dir
from .core.paths import LORA_MARKER
from .errors import OnestepError
from .nets import lora
from .portable.pipeline import OneStepPipeline
from .runs import auxiliary_components, load_generator
from .teachers import kinds


def build_pipeline(run_dir, ema: bool = False, device="cpu"):
    """An in-memory OneStepPipeline of a run (generator + the teacher's VAE / CLIP); returns
    (pipeline, network, config)."""
    generator, cfg, _ = load_generator(run_dir, ema=ema, device=device)
    network = generator.network
    if isinstance(network, lora.AdapterView):  # a full export: the adapter merged into a copy of the base
        network = lora.merged_copy(network)
    parts = network.pipeline_parts(cfg.generator.sigma_init)
    if parts is None:
        raise OnestepError("only runs on diffusers teachers export as pipelines; use `onestep sample` for this run")
    extra = auxiliary_components(network, cfg)
    if network.cond_kind != "text":
        extra = {k: v for k, v in extra.items() if k == "vae"}
    pipe = OneStepPipeline(**parts, **extra)
    return pipe.to(device), network, cfg


def export_run(run_dir, output, ema: bool = False) -> Path:
    """Write the pipeline directory; returns its path."""
    pipe, network, cfg = build_pipeline(run_dir, ema=ema)
    stock = network.stock_scheduler(cfg.generator.sigma_init)

    def stock_scheduler(tmp: Path) -> None:
        if stock is not None:
            stock.save_pretrained(tmp / "stock_scheduler")

    def extra(tmp: Path) -> None:
        stock_scheduler(tmp)
        write_model_card(tmp, cfg, run_dir, ema)

    return write_pipeline_dir(pipe, output, extra)


def write_model_card(directory: Path, cfg, run_dir, ema: bool) -> None:
    """README.md with diffusers' model-card helpers: base model, objective and its parameters,
    the measured FD where ``onestep eval`` left one in the run, licence, how to load."""
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    t, o = cfg.teacher, cfg.objective
    kind = kinds.get(t.kind)
    teacher, base_model = kind.label(t), kind.base_model(t)
    params = ", ".join(f"{k}={v}" for k, v in o.params.items())
    measured = ""
    eval_file = Path(run_dir) / "eval.json"
    if eval_file.is_file():
        try:
            scores = json.loads(eval_file.read_text())
            measured = "\n## Measured\n\n" + "\n".join(f"- {k}: {v}" for k, v in scores.items()
                                                    if isinstance(v, (int, float, str))) + "\n"
        except ValueError:
            pass
    licence = _teacher_licence(base_model) if base_model else None
    description = f"""# One-step generator distilled from {teacher}

Distilled with [onestep](https://pypi.org/project/onestep/) ({o.name}: {params}); {cfg.train.steps}
iterations at batch {cfg.train.batch_size}, generator at sigma_init {cfg.generator.sigma_init}
({'EMA weights' if ema else 'raw weights'}). One network evaluation per image; guidance-free.
{measured}
## Load

```python
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("<this directory>", trust_remote_code=True)  # without onestep
# or: from onestep import OneStepPipeline; pipe = OneStepPipeline.from_pretrained("<this directory>")
images = pipe(num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
```

Licence: {licence or "that of the teacher model (not recorded in its directory)"}.
"""
    # what diffusers' load_or_create_model_card builds for a training script, without its hub lookup
    data = ModelCardData(license=licence, library_name="diffusers", base_model=base_model)
    card = ModelCard.from_template(card_data=data, template_path=MODEL_CARD_TEMPLATE_PATH,
                                   model_description=description)
    tags = ["diffusers", "one-step", "distillation", o.name]
    populate_model_card(card, tags=tags).save(directory / "README.md")


def _teacher_licence(path) -> str | None:
    """The licence a teacher directory's README front matter names, if any."""
    readme = Path(str(path)) / "README.md"
    if not readme.is_file():
        return None
    for line in readme.read_text(errors="replace").splitlines()[:40]:
        if line.strip().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None


def load_pipeline(path, device="cpu") -> OneStepPipeline:
    """``OneStepPipeline.from_pretrained`` with one-line errors for a missing or corrupt directory."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        if (path / LORA_MARKER).is_file():
            raise OnestepError(f"{path} is a LoRA export: load it onto its base pipeline with load_lora_weights "
                               f"({path / 'README.md'} shows how)")
        raise OnestepError(f"{path} is not a pipeline directory (no model_index.json); make one with `onestep export`")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError:
        raise OnestepError(f"{index_file} is not valid JSON; re-export the pipeline") from None
    for name, entry in index.items():
        is_component = isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
        if name.startswith("_") or not is_component or name in ("tokenizer", "scheduler"):
            continue
        folder = path / name
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not weights:
            raise OnestepError(f"missing weights for '{name}' in {path} (expected {folder}/*.safetensors); re-export")
        for w in weights:
            safetensors_header(w)  # raises a one-line error if the file is corrupt
    try:
        return OneStepPipeline.from_pretrained(path).to(device)
    except (OSError, ValueError, RuntimeError) as exc:
        raise OnestepError(f"cannot load pipeline {path}: {str(exc).splitlines()[0]}") from None
