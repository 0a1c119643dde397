"""The analytic Gaussian-mixture teacher: exact denoiser, exact sampling, mode bookkeeping."""

import torch

from onestep.evaluation.gmm_metrics import mmd_rbf
from onestep.teachers.gmm import GaussianMixture

GMM = GaussianMixture([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.5]], [0.1, 0.3, 0.2], [0.5, 0.3, 0.2])


def test_denoiser_equals_tweedie_from_autograd():
    """D(x) = x + sigma^2 grad log p_sigma(x), with the gradient taken by autograd of log p."""
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.3, 1.0, 10.0):
        x = (torch.randn(64, 2, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
        (grad,) = torch.autograd.grad(GMM.log_prob(x, sigma).sum(), x)
        tweedie = x.detach() + sigma**2 * grad
        torch.testing.assert_close(GMM.denoise(x.detach(), sigma), tweedie, rtol=1e-8, atol=1e-9)


def test_log_prob_integrates_to_one():
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    for sigma in (0.0, 0.5):
        dens = GMM.log_prob(pts, sigma).exp().reshape(601, 601)
        total = torch.trapezoid(torch.trapezoid(dens, grid), grid)
        assert abs(float(total) - 1.0) < 1e-3


def test_samples_match_weights_and_moments():
    x, k = GMM.sample(40_000, torch.Generator().manual_seed(1))
    freq = torch.bincount(k, minlength=3).double() / len(k)
    se = (GMM.weights * (1 - GMM.weights) / len(k)).sqrt()
    assert torch.all((freq - GMM.weights).abs() < 4 * se)
    for j in range(3):
        xs = x[k == j].double()
        torch.testing.assert_close(xs.mean(0), GMM.means[j], atol=5 * GMM.stds[j] / len(xs) ** 0.5, rtol=0)
        assert abs(float(xs.std(0).mean()) / float(GMM.stds[j]) - 1) < 0.05
    # within 3 stds of its centre in 2-D: P(chi_2 <= 3) = 1 - exp(-9/2)
    mass = GMM.mode_mass(x, radius=3.0)
    inside = 1 - torch.exp(torch.tensor(-4.5, dtype=torch.float64))
    torch.testing.assert_close(mass[:3], GMM.weights * inside, atol=0.01, rtol=0)
    assert abs(float(mass[-1]) - float(1 - inside)) < 0.003


def test_mmd_separates_distributions():
    a, _ = GMM.sample(1000, torch.Generator().manual_seed(2))
    b, _ = GMM.sample(1000, torch.Generator().manual_seed(3))
    shifted = b + torch.tensor([0.3, 0.0])
    assert abs(mmd_rbf(a, b)) < 0.005
    assert mmd_rbf(a, shifted) > 10 * abs(mmd_rbf(a, b))
