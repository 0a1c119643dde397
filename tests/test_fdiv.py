"""The closed-form f-divergence weights equal autograd derivatives of f (independent check)."""

import pytest
import torch

from onestep.objectives import F_NAMES, f_value, f_weights


@pytest.fixture(autouse=True)
def _float64():
    """Double precision for this module only (a module-level setting would leak into other tests)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _derivatives(name, r, f_alpha):
    """h = f'' r^2, h - r h', r h', q = r (h - r h')' by autograd on f itself."""
    r = r.clone().requires_grad_(True)
    f = f_value(name, r, f_alpha)
    (f1,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (f2,) = torch.autograd.grad(f1.sum(), r, create_graph=True)
    h = f2 * r**2
    (h1,) = torch.autograd.grad(h.sum(), r, create_graph=True)
    g = h - r * h1
    (g1,) = torch.autograd.grad(g.sum(), r)
    return h.detach(), g.detach(), (r * h1).detach(), (r * g1).detach()


@pytest.mark.parametrize("name", F_NAMES)
def test_weights_match_autograd(name):
    r = torch.tensor([0.05, 0.3, 0.9, 1.0, 1.7, 6.0, 25.0])
    w = f_weights(name, r.log(), f_alpha=0.3)
    h, g, rh, q = _derivatives(name, r, 0.3)
    torch.testing.assert_close(w.h, h, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.h_minus_rh, g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.rh, rh, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.q, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", F_NAMES)
def test_divergence_is_zero_and_minimal_at_equal_distributions(name):
    """E_q[f(r)] is minimised at r = 1 among ratios with E_q[r] = 1 (f convex): perturbing a
    two-point ratio (1 + e, 1 - e) never lowers it."""
    base = f_value(name, torch.tensor([1.0]), 0.3)
    for e in (0.1, 0.5, 0.9):
        pair = f_value(name, torch.tensor([1 + e, 1 - e]), 0.3).mean()
        assert pair > base


def test_unknown_divergence_lists_names():
    with pytest.raises(ValueError, match="rkl, srkl"):
        f_weights("kl2", torch.zeros(1))
