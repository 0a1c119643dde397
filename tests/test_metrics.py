"""FID harness: the same number as torch-fidelity's own calculate_metrics and as an
independent numpy/scipy Frechet computation on the same features."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity

from onestep.data.datasets import load_digits
from onestep.errors import OnestepError
from onestep.evaluation.fidelity import (
    ImageTensorDataset,
    compute_metrics,
    extractor_kwargs,
    features_of,
    inception_weights,
)


def _frechet_scipy(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def digit_sets():
    x, _ = load_digits()
    gen = torch.Generator().manual_seed(0)
    noisy = (x[:600] + 0.3 * torch.randn(x[:600].shape, generator=gen)).clamp(-1, 1)
    return noisy, x


def test_fid_equals_torch_fidelity_and_scipy(digit_sets, tmp_path):
    samples, reference = digit_sets
    ours = compute_metrics(samples, reference, features="digits", metrics=("fid",))["frechet_inception_distance"]
    direct = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(samples), input2=ImageTensorDataset(reference), fid=True, cuda=False,
        save_cpu_ram=True, verbose=False, **extractor_kwargs("digits"))["frechet_inception_distance"]
    independent = _frechet_scipy(features_of(samples), features_of(reference))
    assert ours == pytest.approx(direct, rel=1e-9)
    assert ours == pytest.approx(independent, rel=1e-5)
    assert ours > 1.0  # noisy digits are far from clean ones
    # cached reference statistics give the same number, and the cache file exists
    cached = compute_metrics(samples, reference, metrics=("fid",), reference_name="digits-all",
                             cache_root=tmp_path)["frechet_inception_distance"]
    again = compute_metrics(samples, reference, metrics=("fid",), reference_name="digits-all",
                            cache_root=tmp_path)["frechet_inception_distance"]
    assert cached == pytest.approx(ours, rel=1e-9) and again == pytest.approx(ours, rel=1e-9)
    assert any(tmp_path.rglob("*digits-all*"))


def test_real_vs_real_is_small_and_all_metrics_run(digit_sets):
    _, reference = digit_sets
    half_a, half_b = reference[::2], reference[1::2]
    m = compute_metrics(half_a, half_b, metrics=("fid", "kid", "isc", "prc"))
    noisy = compute_metrics(digit_sets[0], half_b, metrics=("fid", "kid", "isc", "prc"))
    assert m["frechet_inception_distance"] < noisy["frechet_inception_distance"]
    assert m["kernel_inception_distance_mean"] < noisy["kernel_inception_distance_mean"]
    assert m["inception_score_mean"] > 5.0  # confident, diverse classifier outputs on real digits
    assert m["precision"] > 0.5 and m["recall"] > 0.5


def test_missing_inception_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(OnestepError, match="weights-inception-2015-12-05-6726825d.pth.*hub/checkpoints"):
        inception_weights()
    pickled = tmp_path / "evil.pth"
    torch.save({"f": print}, pickled)  # a file that needs pickled code to load
    with pytest.raises(OnestepError, match="does not load as plain weights"):
        inception_weights(pickled)
