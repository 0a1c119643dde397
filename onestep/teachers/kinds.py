"""Teacher kinds, one entry each, looked up by ``teacher.kind``: how its config section is checked,
how it is built, where real samples come from without a data set, its skeleton for the memory
estimate, and what a model card calls it. Nothing else compares ``teacher.kind`` to a name:
adding a kind is one ``TeacherKind`` registered here (or next to its teacher) and a name in the
config schema's ``teacher.kind``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config.sections import NetworkConfig, TeacherConfig
from ..core.io import atomic_save, load_safetensors
from ..core.rundir import TEACHER_NETWORK_FILE
from ..core.schedule import ScheduleConfig
from ..errors import OnestepError
from ..nets.mlp import MLPDenoiser
from .base import Teacher
from .fit import train_denoiser
from .gmm import AnalyticTeacher, ExactSamples, GaussianMixture


def digest(*parts) -> str:
    """A short hash of JSON-able settings: what a cached artefact was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuildContext:
    """What building a teacher may need beyond its own section."""

    network: NetworkConfig  # the MLP an analytic teacher fits
    schedule: ScheduleConfig
    seed: int
    attention: str
    run_dir: Path | None = None  # where a fitted network is cached (None: not cached)
    device: torch.device | str = "cpu"
    progress: bool = True


@dataclass(frozen=True)
class TeacherKind:
    name: str
    check: Callable[[TeacherConfig, str], None]  # (section, its key prefix): one-line error if unusable
    build: Callable[[TeacherConfig, BuildContext], Teacher]
    # (section, network section) -> (the denoiser on the meta device, parameters of its other components)
    skeleton: Callable[[TeacherConfig, NetworkConfig], tuple[nn.Module, int]]
    exact_samples: Callable[[Teacher], object | None]  # real samples with no data set (None: teacher samples)
    label: Callable[[TeacherConfig], str]  # what a model card says was distilled
    base_model: Callable[[TeacherConfig], str | None]  # the card's base_model (a path or hub id), if any
    guidance_passes: Callable[[TeacherConfig], int]  # teacher passes per sample
    fits_in_run_dir: bool  # it caches a fitted network in the run directory
    makes_images: bool  # its samples are images (a data set of images can be its real side)


KINDS: dict[str, TeacherKind] = {}


def register(kind: TeacherKind) -> TeacherKind:
    if kind.name in KINDS:
        raise ValueError(f"teacher kind '{kind.name}' registered twice")
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> TeacherKind:
    try:
        return KINDS[name]
    except KeyError:
        raise OnestepError(f"config key 'teacher.kind': unknown kind '{name}' (valid: {', '.join(KINDS)})") from None


# ----------------------------------------------------------------------------- gmm


def _gmm(t: TeacherConfig) -> GaussianMixture:
    return GaussianMixture(t.means, t.stds, t.weights)


def _gmm_check(t: TeacherConfig, prefix: str) -> None:
    if not t.means:
        raise OnestepError(f"config key '{prefix}.means': a gmm teacher needs a list of means")
    dims = {len(m) for m in t.means}
    if len(dims) != 1 or 0 in dims:
        raise OnestepError(f"config key '{prefix}.means': every mean needs the same, non-zero length")
    for name in ("stds", "weights"):
        value = getattr(t, name)
        if value is not None and len(value) != len(t.means):
            raise OnestepError(f"config key '{prefix}.{name}': expected {len(t.means)} values (one per "
                               f"mean), got {len(value)}")


def gmm_network(t: TeacherConfig, n: NetworkConfig) -> MLPDenoiser:
    """The (untrained) MLP an analytic teacher's fit uses."""
    gmm = _gmm(t)
    sigma_data = n.sigma_data if n.sigma_data is not None else gmm.data_std()
    return MLPDenoiser(gmm.dim, hidden=n.hidden, depth=n.depth, sigma_data=sigma_data)


def _gmm_build(t: TeacherConfig, ctx: BuildContext) -> Teacher:
    """The mixture with an MLP fitted to its exact denoiser over all sigmas (deterministic),
    cached in ``ctx.run_dir`` tagged with what it was fitted to: a cache made for another
    mixture, network, schedule or seed is refitted, never reused."""
    n, gmm = ctx.network, _gmm(t)
    cache = Path(ctx.run_dir) / TEACHER_NETWORK_FILE if ctx.run_dir is not None else None
    tag = digest(asdict(t), asdict(n), asdict(ctx.schedule), ctx.seed)
    network = None
    if cache is not None and cache.is_file():
        tensors, meta = load_safetensors(cache)
        if meta.get("fingerprint") == tag:
            network = gmm_network(t, n)
            network.load_state_dict(tensors)
    if network is None:
        with torch.random.fork_rng():  # initialisation independent of the global RNG history
            torch.manual_seed(ctx.seed)
            network = gmm_network(t, n)
        network, _ = train_denoiser(
            network, lambda k, rng: (gmm.sample(k, generator=rng)[0], None), steps=n.fit_steps,
            batch_size=n.fit_batch, lr=n.fit_lr, schedule=ctx.schedule, seed=ctx.seed,
            target=lambda x, s, c: gmm.denoise(x, s), wide_sigma=True, progress=ctx.progress,
            desc="fit teacher MLP",
        )
        if cache is not None:
            atomic_save(network.state_dict(), cache, {"fingerprint": tag})
    return AnalyticTeacher(gmm, network.to(ctx.device)).to(ctx.device)


def _gmm_skeleton(t: TeacherConfig, n: NetworkConfig) -> tuple[nn.Module, int]:
    with torch.device("meta"):
        return MLPDenoiser(len(t.means[0]), n.hidden, n.depth), 0


register(TeacherKind(
    name="gmm", check=_gmm_check, build=_gmm_build, skeleton=_gmm_skeleton,
    exact_samples=lambda teacher: ExactSamples(teacher.gmm),
    label=lambda t: "an analytic Gaussian mixture", base_model=lambda t: None,
    guidance_passes=lambda t: 1, fits_in_run_dir=True, makes_images=False,
))


# ----------------------------------------------------------------------------- diffusers


def _diffusers_check(t: TeacherConfig, prefix: str) -> None:
    if not t.path:
        raise OnestepError(f"config key '{prefix}.path': a diffusers teacher needs a directory or hub id")


def _diffusers_build(t: TeacherConfig, ctx: BuildContext) -> Teacher:
    from .diffusers import load_diffusers_teacher

    return load_diffusers_teacher(t.path, t.subfolder, t.dtype, t.prompts, t.guidance_scale, ctx.attention,
                                  ctx.device, trust_remote_code=t.trust_remote_code, resolution=t.resolution)


def _diffusers_skeleton(t: TeacherConfig, n: NetworkConfig) -> tuple[nn.Module, int]:
    if t.trust_remote_code:
        raise OnestepError("no memory estimate for a pipeline with its own code (teacher.trust_remote_code)")
    from ..nets.diffusers_unet import DiffusersDenoiser, network_param
    from .diffusers import check_layout, skeleton_components

    parts = skeleton_components(t.path, t.subfolder)
    check_layout(t.path, {**parts, "tokenizer_2": True} if "text_encoder_2" in parts else parts)
    vae = parts.get("vae")
    param = network_param(parts["unet"], parts["scheduler"], dict(vae.config) if vae is not None else None,
                          t.resolution, t.guidance_scale)
    network = DiffusersDenoiser(parts["unet"], param, latent="vae" in parts)
    aux = sum(p.numel() for name, m in parts.items() if name not in ("unet", "scheduler") and isinstance(m, nn.Module)
              for p in m.parameters())
    return network, aux


register(TeacherKind(
    name="diffusers", check=_diffusers_check, build=_diffusers_build, skeleton=_diffusers_skeleton,
    exact_samples=lambda teacher: None, label=lambda t: str(t.path), base_model=lambda t: str(t.path),
    guidance_passes=lambda t: 2 if t.guidance_scale != 1.0 else 1, fits_in_run_dir=False, makes_images=True,
))
