"""The Gaussian gradient oracle of docs/design.md section 6.

Teacher ``N(0, 1)``, generator ``x = mu + s z``: at noise level sigma
``p_sigma = N(0, 1 + sigma^2)`` and ``q_sigma = N(mu, s^2 + sigma^2)`` have exact scores
and an exact ratio. The Monte-Carlo generator gradient of an objective (fake score set to
the exact generator score, ``wf`` replaced by 1) is compared with the gradient of a
divergence computed by quadrature, independently of the objective code.
"""

from __future__ import annotations

import math

import torch

from onestep.objectives import REGISTRY, ObjectiveInputs, f_value, f_weights


def log_normal(x, mean, var):
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)


def quadrature_gradient(mu: float, s: float, sigma: float, target: str, f: str = "rkl",
                        f_alpha: float = 0.5, c: float = 1.0) -> torch.Tensor:
    """d/d(mu, s) of a divergence between p_sigma and q_sigma, by trapezoid quadrature.

    target: ``fdiv`` -> sigma^2 D_f(p||q) = sigma^2 E_q[f(p/q)];
            ``expansion`` -> sigma^4/2 E_q[h(p/q) |s_p - s_q|^2] (h of ``f``);
            ``sim`` -> E_{sg(q)}[sqrt(|s_p - s_q|^2 + c^2) - c].
    """
    mu_t = torch.tensor(float(mu), dtype=torch.float64, requires_grad=True)
    s_t = torch.tensor(float(s), dtype=torch.float64, requires_grad=True)
    vp, vq = 1.0 + sigma**2, s_t**2 + sigma**2
    half = 14 * max(math.sqrt(vp), math.sqrt(s**2 + sigma**2)) + abs(mu)
    x = torch.linspace(-half, half, 200_001, dtype=torch.float64)
    lp, lq = log_normal(x, 0.0, vp), log_normal(x, mu_t, vq)
    q = lq.exp()
    score_p, score_q = -x / vp, -(x - mu_t) / vq
    if target == "fdiv":
        value = sigma**2 * torch.trapezoid(q * f_value(f, (lp - lq).exp(), f_alpha), x)
    elif target == "expansion":
        h = f_weights(f, lp - lq, f_alpha).h
        value = sigma**4 / 2 * torch.trapezoid(q * h * (score_p - score_q) ** 2, x)
    elif target == "sim":
        value = torch.trapezoid(q.detach() * (((score_p - score_q) ** 2 + c**2).sqrt() - c), x)
    else:
        raise ValueError(target)
    return torch.stack(torch.autograd.grad(value, [mu_t, s_t]))


def monte_carlo_gradient(mu: float, s: float, sigma: float, name: str, params, n: int = 400_000,
                         seed: int = 0, weights_fn=None, grad_log_r_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of the objective's per-sample gradient w.r.t. (mu, s).

    ``weights_fn(log_r) -> FWeights`` overrides the exact f-weights (to ablate terms);
    ``grad_log_r_fn(x_t, exact) -> (n, 1)`` gives ``ObjectiveInputs.grad_log_r`` (``exact``: the
    exact ``grad log p_sigma / q_sigma``, ``s_p - s_q``).
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x_g = (mu + s * z).requires_grad_(True)
    x_t = x_g + sigma * noise
    vp, vq = 1.0 + sigma**2, s**2 + sigma**2
    spec = REGISTRY[name]
    Dr = x_t / vp  # exact teacher denoiser
    Df = x_t - sigma**2 * (x_t - mu) / vq  # exact generator denoiser (mu, s held fixed)
    if "teacher" not in spec.grad_through:
        Dr = Dr.detach()
    if "fake_score" not in spec.grad_through:
        Df = Df.detach()
    xt = x_t.detach()[:, 0]
    log_r = log_normal(xt, 0.0, vp) - log_normal(xt, mu, vq)
    f, f_alpha = getattr(params, "f", "rkl"), getattr(params, "f_alpha", 0.5)
    weights = weights_fn(log_r) if weights_fn else f_weights(f, log_r, f_alpha)
    sig = torch.full((n,), sigma, dtype=torch.float64)
    grad_log_r = None
    if grad_log_r_fn is not None:
        exact = (-x_t / vp + (x_t - mu) / vq).detach()
        grad_log_r = grad_log_r_fn(x_t.detach(), exact)
    loss = spec.fn(ObjectiveInputs(x_g, sig, Dr, Df, weights, grad_log_r), params)
    (gx,) = torch.autograd.grad(loss.sum(), x_g)
    per_sample = torch.stack([gx[:, 0], gx[:, 0] * z[:, 0]], dim=1)  # d/dmu, d/ds
    return per_sample.mean(0), per_sample.std(0) / math.sqrt(n)
