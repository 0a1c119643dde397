"""Analytic isotropic Gaussian mixture: exact density, score and denoiser at every sigma.

``p_0 = sum_k w_k N(m_k, s_k^2 I)``, so under ``x_t = x0 + sigma eps``
``p_sigma = sum_k w_k N(m_k, (s_k^2 + sigma^2) I)`` and Tweedie's formula gives the
denoiser in closed form (posterior responsibilities times per-component posterior means).
"""

from __future__ import annotations

import math

import torch

from ..nets.denoiser import Denoiser
from .base import Teacher


class GaussianMixture:
    """means: (K, d); stds: (K,); weights: (K,) (normalised here). All float64 internally."""

    def __init__(self, means, stds=None, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, self.dim = self.means.shape
        self.stds = torch.as_tensor(stds if stds is not None else [1.0] * k, dtype=torch.float64)
        w = torch.as_tensor(weights if weights is not None else [1.0] * k, dtype=torch.float64)
        self.weights = w / w.sum()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def data_std(self) -> float:
        """Per-coordinate standard deviation of p_0 (for EDM's sigma_data)."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self.means**2 + self.stds[:, None] ** 2)).sum(0)
        return float((second - mean**2).mean().sqrt())

    def _log_joint(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; m_k, (s_k^2 + sigma^2) I); x (B, d), sigma (B,) -> (B, K)."""
        var = self.stds[None, :] ** 2 + sigma[:, None] ** 2  # (B, K)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        return (
            self.weights.log()[None]
            - 0.5 * sq / var
            - 0.5 * self.dim * (var.log() + math.log(2 * math.pi))
        )

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_sigma(x); x (B, d), sigma (B,) -> (B,), float64."""
        x, sigma = x.double(), _as_batch(sigma, x)
        return torch.logsumexp(self._log_joint(x, sigma), dim=1)

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """p(k | x_t); (B, K)."""
        x, sigma = x.double(), _as_batch(sigma, x)
        return torch.softmax(self._log_joint(x, sigma), dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact E[x0 | x_t = x]; x (B, d), sigma (B,) or scalar -> (B, d) in x's dtype."""
        xd, s = x.double(), _as_batch(sigma, x)
        gamma = self.responsibilities(xd, s)  # (B, K)
        shrink = self.stds[None] ** 2 / (self.stds[None] ** 2 + s[:, None] ** 2)  # (B, K)
        post = self.means[None] + shrink[..., None] * (xd[:, None, :] - self.means[None])
        return (gamma[..., None] * post).sum(1).to(x.dtype)

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x) - x) / sigma^2; (B, d)."""
        s = _as_batch(sigma, x).to(x.dtype)
        return (self.denoise(x, s) - x) / s[:, None] ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples of p_0: returns (x (n, d) float32, component index (n,))."""
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * eps
        return x.float(), k

    def assign_modes(self, x: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
        """Index of the component whose centre is within ``radius`` stds of x, else -1; (B,)."""
        d = (x.double()[:, None, :] - self.means[None]).norm(dim=-1) / self.stds[None]
        best = d.argmin(dim=1)
        inside = d.gather(1, best[:, None])[:, 0] <= radius
        return torch.where(inside, best, torch.full_like(best, -1))

    def mode_mass(self, x: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
        """Fraction of samples in each mode (K,), plus the fraction in no mode as a last entry."""
        idx = self.assign_modes(x, radius)
        counts = torch.bincount(idx + 1, minlength=self.num_components + 1).double()
        return torch.cat([counts[1:], counts[:1]]) / len(x)


class ExactSamples:
    """Exact samples of an analytic mixture."""

    def __init__(self, gmm: GaussianMixture):
        self.gmm = gmm

    def draw(self, n: int, rng: torch.Generator):
        return self.gmm.sample(n, generator=rng)[0], None


def _as_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.double().reshape(x.shape[0])


class AnalyticTeacher(Teacher):
    """Exact Gaussian-mixture teacher; ``network`` is an MLP fitted to its denoiser (copied
    into generator and fake score; its hidden layer is the feature tap)."""

    def __init__(self, gmm: GaussianMixture, network: Denoiser):
        super().__init__(network)
        self.gmm = gmm

    def _denoise(self, x, sigma, cond, features):
        d = self.gmm.denoise(x.float(), sigma).float()
        feats = self.network(x, sigma, cond, return_features=True)[1] if features else None
        return d, feats
