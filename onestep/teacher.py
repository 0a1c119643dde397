"""The frozen teacher: ``D(x, sigma, cond) -> x0_hat`` in fp32, always in eval mode.

Every teacher exposes the same denoiser language (DESIGN.md section 1) and a
``network``: the module the generator and fake score are copied from. Conversions
from other parameterisations (diffusers VP/flow models) happen inside the teacher's
network wrapper, never downstream.
"""

from __future__ import annotations

import torch
from torch import nn

from .toy import GaussianMixture


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for every parameter."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Teacher(nn.Module):
    """Base class. Subclasses set ``network``, ``sample_shape`` and implement ``_denoise``.

    ``forward(x, sigma, cond, return_features)``: x (B, *sample_shape), sigma (B,) ->
    x0_hat (B, *sample_shape) fp32 [, features of ``network`` at the same input].
    """

    network: nn.Module
    sample_shape: tuple[int, ...]
    num_classes: int = 0

    def train(self, mode: bool = True):  # a teacher is always in eval mode
        return super().train(False)

    def _denoise(self, x, sigma, cond, features: bool):
        """(x0_hat fp32, features or None)."""
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self._denoise(x, sigma, cond, False)[0]

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        d, feats = self._denoise(x, sigma, cond, return_features)
        return (d, feats) if return_features else d

    def sample_cond(self, n: int, rng: torch.Generator):
        """Conditioning for ``n`` samples (None for unconditional teachers)."""
        return None

    def real_samples(self, n: int, rng: torch.Generator, cond=None):
        """Samples of the teacher's distribution for the head's "real" side:
        x (n, *sample_shape), or (x, cond) for conditional teachers."""
        raise NotImplementedError


class AnalyticTeacher(Teacher):
    """Exact Gaussian-mixture teacher; ``network`` is an MLP fitted to its denoiser
    (copied into generator and fake score; its hidden layer is the feature tap)."""

    def __init__(self, gmm: GaussianMixture, network: nn.Module):
        super().__init__()
        self.gmm = gmm
        self.network = freeze(network)
        self.sample_shape = (gmm.dim,)

    def _denoise(self, x, sigma, cond, features):
        d = self.gmm.denoise(x.float(), sigma).float()
        feats = self.network(x, sigma, cond, return_features=True)[1] if features else None
        return d, feats

    def real_samples(self, n, rng, cond=None):
        x, _ = self.gmm.sample(n, generator=rng)
        return x


class NetworkTeacher(Teacher):
    """A teacher that is a (frozen) denoiser network, e.g. a wrapped diffusers UNet."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = freeze(network)
        self.sample_shape = tuple(network.sample_shape)

    def _denoise(self, x, sigma, cond, features):
        if features:
            d, feats = self.network(x, sigma, cond, return_features=True)
            return d.float(), feats
        return self.network(x, sigma, cond).float(), None


# ----------------------------------------------------------------------------- loading

TEACHER_NETWORK_FILE = "teacher_network.safetensors"


def build_network_for(config):
    """The (untrained) network architecture an analytic teacher's fit uses."""
    from .mlp import MLPDenoiser

    t, n = config.teacher, config.network
    gmm = GaussianMixture(t.means, t.stds, t.weights)
    sigma_data = n.sigma_data if n.sigma_data is not None else gmm.data_std()
    return MLPDenoiser(gmm.dim, hidden=n.hidden, depth=n.depth, sigma_data=sigma_data)


def fit_gmm_network(config, progress: bool = True):
    """Fit the MLP denoiser to the mixture's exact denoiser over all sigmas (deterministic)."""
    from .teacher_training import train_denoiser

    t, n = config.teacher, config.network
    gmm = GaussianMixture(t.means, t.stds, t.weights)
    with torch.random.fork_rng():  # initialisation independent of the global RNG history
        torch.manual_seed(config.train.seed)
        network = build_network_for(config)
    network, _ = train_denoiser(
        network,
        lambda k, rng: (gmm.sample(k, generator=rng)[0], None),
        steps=n.fit_steps,
        batch_size=n.fit_batch,
        lr=n.fit_lr,
        schedule=config.schedule,
        seed=config.train.seed,
        target=lambda x, s, c: gmm.denoise(x, s),
        wide_sigma=True,
        progress=progress,
        desc="fit teacher MLP",
    )
    return network


def load_teacher(config, run_dir=None, device="cpu", progress: bool = True) -> Teacher:
    """Build the teacher a config names. The analytic teacher's fitted network is cached
    in ``run_dir`` (so a resumed run does not refit)."""
    from pathlib import Path

    from .checkpoint import atomic_save, load_safetensors

    if config.teacher.kind == "gmm":
        t = config.teacher
        gmm = GaussianMixture(t.means, t.stds, t.weights)
        cache = Path(run_dir) / TEACHER_NETWORK_FILE if run_dir is not None else None
        if cache is not None and cache.is_file():
            network = build_network_for(config)
            network.load_state_dict(load_safetensors(cache)[0])
        else:
            network = fit_gmm_network(config, progress=progress)
            if cache is not None:
                atomic_save(network.state_dict(), cache)
        return AnalyticTeacher(gmm, network.to(device)).to(device)
    if config.teacher.kind == "diffusers":
        from .diffusers_teacher import load_diffusers_teacher

        return load_diffusers_teacher(config, run_dir=run_dir, device=device, progress=progress)
    raise ValueError(f"unknown teacher kind {config.teacher.kind!r}")
