"""Registry invariants (docs/design.md section 6) and the normalisers' properties."""

import dataclasses

import pytest
import torch
from _oracle import monte_carlo_gradient, quadrature_gradient

from onestep import config as config_mod
from onestep.core.schedule import log_sigma_bins
from onestep.errors import OnestepError
from onestep.nets.mlp import MLPDenoiser
from onestep.objectives import REGISTRY, ObjectiveInputs, divergence_weights, f_weights, registry
from onestep.objectives.dmd import DMDParams
from onestep.objectives.f_distill import FDistillParams
from onestep.objectives.ratio import RatioParams
from onestep.objectives.sid import SiDParams
from onestep.objectives.uni_instruct import UniInstructParams

torch.manual_seed(0)


def _inputs(Dr_net, Df_net, weights=None, batch=16, dim=4):
    """Generator samples through two denoisers, gradients through their inputs."""
    gen = torch.Generator().manual_seed(1)
    x_g = torch.randn(batch, dim, generator=gen).requires_grad_(True)
    sigma = torch.exp(torch.randn(batch, generator=gen))
    x_t = x_g + sigma[:, None] * torch.randn(batch, dim, generator=gen)
    grad_log_r = torch.randn(batch, dim, generator=gen)  # an estimate of grad log r (uni_instruct's default reads it)
    return ObjectiveInputs(x_g, sigma, Dr_net(x_t, sigma), Df_net(x_t, sigma), weights, grad_log_r)


def _grad(name, params, inp):
    spec = REGISTRY[name]
    inp = dataclasses.replace(
        inp,
        Dr=inp.Dr if "teacher" in spec.grad_through else inp.Dr.detach(),
        Df=inp.Df if "fake_score" in spec.grad_through else inp.Df.detach(),
    )
    (g,) = torch.autograd.grad(spec.fn(inp, params).mean(), inp.x_g)
    return g


# every registered objective at its defaults, and each f-weighted one with three more f
ALL = [(name, spec.params()) for name, spec in REGISTRY.items()] + [
    (name, spec.params(f=f)) for name, spec in REGISTRY.items()
    if "f" in {fld.name for fld in dataclasses.fields(spec.params)} for f in ("js", "fkl", "chi2")
]


@pytest.mark.parametrize("name,params", ALL, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_zero_gradient_when_fake_equals_teacher(name, params):
    net = MLPDenoiser(4, hidden=32, depth=2)
    weights = f_weights(getattr(params, "f", "rkl"), torch.randn(16) * 0.5)
    g = _grad(name, params, _inputs(net, net, weights))
    assert g.abs().max() < 1e-6
    other = MLPDenoiser(4, hidden=32, depth=2)  # and it is not trivially zero otherwise
    assert _grad(name, params, _inputs(net, other, weights)).abs().max() > 1e-4


def test_f_distill_rkl_equals_dmd():
    a, b = MLPDenoiser(4, 32, 2), MLPDenoiser(4, 32, 2)
    inp = _inputs(a, b)
    ones = f_weights("rkl", torch.zeros(16))
    g_dmd = _grad("dmd", DMDParams(), inp)
    inp2 = _inputs(a, b, ones)
    g_fd = _grad("f_distill", FDistillParams(f="rkl"), inp2)
    torch.testing.assert_close(g_fd, g_dmd, rtol=0, atol=0)


@pytest.mark.parametrize("alpha", (0.5, 1.2))
def test_uni_instruct_rkl_is_sid(alpha):
    """uni_instruct(rkl) with fisher_weight = 2 (1 - alpha) equals sid(alpha); 0.5 <-> exact."""
    a, b = MLPDenoiser(4, 32, 2), MLPDenoiser(4, 32, 2)
    ones = f_weights("rkl", torch.zeros(16))
    g_sid = _grad("sid", SiDParams(alpha=alpha), _inputs(a, b))
    g_ui = _grad("uni_instruct", UniInstructParams(f="rkl", fisher_weight=2 * (1 - alpha)), _inputs(a, b, ones))
    torch.testing.assert_close(g_ui, g_sid, rtol=1e-5, atol=1e-7)
    if alpha == 0.5:
        assert UniInstructParams().fisher_weight == 2 * (1 - alpha)


@pytest.mark.parametrize("name,params", [
    ("dmd", DMDParams(weight_norm="wf")),
    ("sid", SiDParams(alpha=0.5, weight_norm="wf")),
    ("uni_instruct", UniInstructParams(f="js", weight_norm="wf", log_ratio_gradient="scores")),
])
def test_wf_normalisation_agrees_in_sign_and_direction(name, params):
    """``/ wf`` rescales samples: the gradient keeps the oracle's sign per coordinate and
    points the same way (cosine > 0.9)."""
    mu, s, sigma = 0.5, 0.8, 0.5
    target = "fdiv" if name == "dmd" else "expansion"
    quad = quadrature_gradient(mu, s, sigma, target, getattr(params, "f", "rkl"))
    mc, _ = monte_carlo_gradient(mu, s, sigma, name, params)
    assert torch.all(torch.sign(mc) == torch.sign(quad))
    assert torch.nn.functional.cosine_similarity(mc, quad, dim=0) > 0.9


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(OnestepError, match="valid: diff_instruct, dmd, sid, sida, sim, f_distill, uni_instruct"):
        registry.get("dmd3")


def _objective(**section):
    return config_mod.from_dict({"teacher": {"kind": "gmm", "means": [[0.0]]}, "objective": section}).objective


def test_config_rejects_parameters_an_objective_does_not_take():
    with pytest.raises(OnestepError, match="'objective.f' is not a parameter of 'sid'"):
        _objective(name="sid", f="js")
    # set to null it is unset: a config written for f_distill switches to sid with objective.f=null
    assert _objective(name="sid", f=None).params == _objective(name="sid").params
    with pytest.raises(OnestepError, match="unknown config key 'objective.nope'"):
        _objective(name="sid", nope=None)
    with pytest.raises(OnestepError, match="objective.f.*got 'kl'"):
        _objective(name="f_distill", f="kl")
    with pytest.raises(OnestepError, match="only used with objective.f: alpha"):
        _objective(name="f_distill", f="js", f_alpha=0.3)
    spec, params = _objective(name="f_distill", f="alpha", f_alpha=0.3).resolve()
    assert spec.name == "f_distill" and params.f_alpha == 0.3 and spec.needs_ratio(params)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_objective_is_configurable_with_its_defaults(name):
    """Each registered objective loads from a config, its parameters filled with their defaults,
    and round-trips through the resolved YAML."""
    spec = REGISTRY[name]
    section = {"name": name}
    data = {"teacher": {"kind": "gmm", "means": [[0.0]]}, "objective": section,
            "gan": {"weight": 0.01 if spec.requires_gan else 0.0}}
    cfg = config_mod.from_dict(data)
    got_spec, params = cfg.objective.resolve()
    assert got_spec is spec and params == spec.params()
    assert config_mod.loads(config_mod.dump_yaml(cfg)) == cfg
    assert spec.reference and "arXiv" in spec.reference


def test_ratio_weights_clip_normalise_per_bin_and_by_mean_h():
    sched = config_mod.ScheduleConfig()
    gen = torch.Generator().manual_seed(3)
    sigma = torch.exp(torch.randn(512, generator=gen) * 2)
    logit = torch.randn(512, generator=gen) * 4 + 25 * (torch.rand(512, generator=gen) < 0.05)
    p = RatioParams(logit_clip=10.0, ratio_clip=(0.1, 20.0), ratio_bins=8, normalize_weights=False)
    w = divergence_weights(logit, sigma, "fkl", 0.5, p, sched)  # fkl: h = r
    bins = log_sigma_bins(sigma, sched, 8)
    for b in bins.unique():
        assert abs(float(w.h[bins == b].mean()) - 1) < 1e-5  # E_q[r] = 1 per sigma-bin
    p2 = RatioParams(ratio_bins=0, normalize_weights=False)
    raw = divergence_weights(logit, sigma, "fkl", 0.5, p2, sched).h
    assert raw.min() >= 0.1 - 1e-6 and raw.max() <= 20 + 1e-4  # clipped ratio
    w3 = divergence_weights(logit, sigma, "js", 0.5, RatioParams(), sched)
    assert abs(float(w3.h.mean()) - 1) < 1e-5  # h / mean(h)
    unnorm = divergence_weights(logit, sigma, "js", 0.5, dataclasses.replace(RatioParams(), normalize_weights=False), sched)
    torch.testing.assert_close(w3.rh / w3.h, unnorm.rh / unnorm.h)  # all weights scaled alike


def _tiled_gradients(name, params, copies, dim=6, batch=8):
    """The generator gradient of objective ``name`` on samples of ``dim`` values and on the same
    samples tiled ``copies`` times (every input repeated along the values, the denoisers acting per
    value, so the tiled problem is the same one with more values); (B, dim) each, the tiled one
    read at its first copy."""
    gen = torch.Generator().manual_seed(3)
    x_g, noise, grad_log_r = (torch.randn(batch, dim, generator=gen) for _ in range(3))
    sigma = torch.exp(torch.randn(batch, generator=gen))
    a, b = torch.rand(dim, generator=gen) + 0.5, torch.rand(dim, generator=gen) + 0.5
    weights = f_weights(getattr(params, "f", "rkl"), torch.randn(batch, generator=gen) * 0.5)

    def grad(k):
        xg = x_g.repeat(1, k).requires_grad_(True)
        x_t = xg + sigma[:, None] * noise.repeat(1, k)
        inp = ObjectiveInputs(xg, sigma, torch.tanh(a.repeat(k) * x_t), b.repeat(k) * x_t / (1 + sigma[:, None] ** 2),
                              weights, grad_log_r.repeat(1, k))
        return _grad(name, params, inp)[:, :dim]

    return grad(1), grad(copies)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_objective_reduces_over_values_as_registered(name):
    """The registry's ``reduction`` is what the gradient does: with every value repeated 4 times a
    summed per-value gradient stays, an averaged one falls 4x, sim's l2-normalised one 2x; that is
    what ``gradient_scale`` (which eval/fashion_grid.py balances the added terms with) says. sim is
    read with its Huber constant near zero (at c > 0 it is sum-like for small score differences)."""
    spec = REGISTRY[name]
    params = spec.params(c=1e-8) if name == "sim" else spec.params()
    one, tiled = _tiled_gradients(name, params, copies=4)
    assert one.abs().max() > 1e-4
    expected = registry.gradient_scale(name, 4 * 6) / registry.gradient_scale(name, 6)
    torch.testing.assert_close(tiled, expected * one, rtol=1e-4, atol=1e-7)
    if spec.reduction != "sum":  # and the check can tell the reductions apart
        assert not torch.allclose(tiled, one, rtol=1e-2)


def test_the_added_terms_are_balanced_between_reductions():
    """A weight set next to f_distill (mean) is 784x larger next to sid (sum) on 1 x 28 x 28 samples,
    28x next to sim (l2); an unknown reduction is refused at registration."""
    assert registry.gradient_scale("sid", 784) / registry.gradient_scale("f_distill", 784) == pytest.approx(784)
    assert registry.gradient_scale("sim", 784) / registry.gradient_scale("dmd", 784) == pytest.approx(28)
    with pytest.raises(ValueError, match="reduction must be one of"):
        registry.register("not_an_objective", params=DMDParams, sigma_sampler="karras", reference="-",
                          reduction="median")(lambda inp, p: inp.x_g)
    assert "not_an_objective" not in REGISTRY
