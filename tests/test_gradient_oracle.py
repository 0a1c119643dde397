"""Each objective's Monte-Carlo generator gradient equals the quadrature gradient of the
divergence it claims to minimise (docs/design.md section 6), w.r.t. the generator's mean AND scale."""

import pytest
import torch
from _oracle import monte_carlo_gradient, quadrature_gradient

from onestep.objectives import FWeights, f_weights
from onestep.objectives.f_distill import FDistillParams
from onestep.objectives.sid import SiDParams
from onestep.objectives.sim import SIMParams
from onestep.objectives.uni_instruct import UniInstructParams

Z_TOL = 4.5  # |MC - quadrature| in Monte-Carlo standard errors
SIGMAS = (0.05, 0.5, 2.0, 20.0)
# (mu, s): one narrower and one wider than the teacher; the chi^2 family needs finite
# second moments of the ratio, so chi2 uses only wider generators and neyman only narrower.
GENERATORS = ((0.5, 0.8), (-0.3, 1.3))
F_ALL = ("rkl", "srkl", "js", "sh", "fkl", "jeffreys", "chi2", "neyman", "alpha")


def _cases(fs):
    for f in fs:
        for sigma in SIGMAS:
            for mu, s in GENERATORS:
                if (f == "chi2" and s < 1) or (f == "neyman" and s > 1):
                    continue
                yield pytest.param(f, sigma, mu, s, id=f"{f}-sigma{sigma}-mu{mu}-s{s}")


def _assert_match(mc, se, quad):
    z = (mc - quad) / se
    assert torch.all(z.abs() < Z_TOL), f"MC {mc.tolist()} vs quadrature {quad.tolist()} (z={z.tolist()})"


@pytest.mark.parametrize("f,sigma,mu,s", list(_cases(F_ALL)))
def test_f_distill_matches_f_divergence_gradient(f, sigma, mu, s):
    params = FDistillParams(f=f, f_alpha=0.3, weight_norm="none")
    mc, se = monte_carlo_gradient(mu, s, sigma, "f_distill", params, n=200_000)
    _assert_match(mc, se, quadrature_gradient(mu, s, sigma, "fdiv", f, f_alpha=0.3))


@pytest.mark.parametrize("f,sigma,mu,s", list(_cases(("rkl", "srkl", "js", "sh", "fkl", "jeffreys", "chi2"))))
def test_uni_instruct_matches_expansion_gradient(f, sigma, mu, s):
    params = UniInstructParams(f=f, weight_norm="none", log_ratio_gradient="scores")
    mc, se = monte_carlo_gradient(mu, s, sigma, "uni_instruct", params, n=200_000)
    _assert_match(mc, se, quadrature_gradient(mu, s, sigma, "expansion", f))


@pytest.mark.parametrize("f,sigma,mu,s", list(_cases(("js", "fkl", "jeffreys", "chi2"))))
def test_uni_instruct_with_the_ratio_gradient_matches_expansion_gradient(f, sigma, mu, s):
    """``log_ratio_gradient: discriminator`` with an exact ratio (its input-gradient s_p - s_q) is
    the exact gradient too."""
    params = UniInstructParams(f=f, weight_norm="none", log_ratio_gradient="discriminator")
    mc, se = monte_carlo_gradient(mu, s, sigma, "uni_instruct", params, n=200_000,
                                  grad_log_r_fn=lambda x_t, exact: exact)
    _assert_match(mc, se, quadrature_gradient(mu, s, sigma, "expansion", f))


@pytest.mark.parametrize("f", ("js", "fkl"))
def test_oracle_detects_a_wrong_ratio_gradient(f):
    """The variant reads ``grad_log_r``: a zero or a halved one is caught (L_x for both f, and
    L_di for js, go through it)."""
    mu, s, sigma = 0.5, 0.8, 0.5
    params = UniInstructParams(f=f, weight_norm="none", log_ratio_gradient="discriminator")
    for wrong in (lambda x_t, exact: torch.zeros_like(exact), lambda x_t, exact: 0.5 * exact):
        mc, se = monte_carlo_gradient(mu, s, sigma, "uni_instruct", params, grad_log_r_fn=wrong)
        z = (mc - quadrature_gradient(mu, s, sigma, "expansion", f)) / se
        assert z.abs().max() > 10, z.tolist()


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("mu,s", GENERATORS)
def test_sid_half_matches_fisher_divergence_gradient(sigma, mu, s):
    mc, se = monte_carlo_gradient(mu, s, sigma, "sid", SiDParams(alpha=0.5, weight_norm="none"))
    _assert_match(mc, se, quadrature_gradient(mu, s, sigma, "expansion", "rkl"))


@pytest.mark.parametrize("c", (0.3, 1.0, 5.0))
@pytest.mark.parametrize("sigma", (0.5, 2.0))
@pytest.mark.parametrize("mu,s", GENERATORS)
def test_sim_matches_pseudo_huber_gradient(c, sigma, mu, s):
    mc, se = monte_carlo_gradient(mu, s, sigma, "sim", SIMParams(c=c, sigma_weighting="none"))
    _assert_match(mc, se, quadrature_gradient(mu, s, sigma, "sim", c=c))


@pytest.mark.parametrize(
    "ablate,f",
    [
        ("L_x", "fkl"),  # L_x is invisible for the mean but not for the scale
        ("L_di", "js"),
        ("L_fisher", "js"),
    ],
)
def test_oracle_detects_a_missing_uni_instruct_term(ablate, f):
    """The oracle has power: dropping any one term of Uni-Instruct is caught."""

    def weights_fn(log_r):
        w = f_weights(f, log_r)
        zero = torch.zeros_like(w.h)
        return FWeights(
            w.h,
            zero if ablate == "L_fisher" else w.h_minus_rh,
            zero if ablate == "L_x" else w.rh,
            zero if ablate == "L_di" else w.q,
        )

    mu, s, sigma = 0.5, 0.8, 0.5
    mc, se = monte_carlo_gradient(mu, s, sigma, "uni_instruct",
                                  UniInstructParams(f=f, weight_norm="none", log_ratio_gradient="scores"),
                                  weights_fn=weights_fn)
    z = (mc - quadrature_gradient(mu, s, sigma, "expansion", f)) / se
    assert z.abs().max() > 10, f"ablating {ablate} went unnoticed (z={z.tolist()})"
    if ablate == "L_x":
        assert z[0].abs() < Z_TOL, "L_x should have zero mean for the generator's mean"
