"""The copy check: nearest-training-image distances of student, teacher and real held-out samples."""

import pytest
import torch

from onestep.evaluation.copy_check import (
    copy_report,
    data_copying,
    mann_whitney_z,
    nearest_distances,
    with_held_out,
)


def test_nearest_distances_are_the_brute_force_minimum():
    g = torch.Generator().manual_seed(0)
    x, train = torch.randn(7, 1, 2, 2, generator=g), torch.randn(30, 1, 2, 2, generator=g)
    expected = torch.stack([(train.flatten(1) - xi.flatten()).norm(dim=1).min() for xi in x])
    torch.testing.assert_close(nearest_distances(x, train, batch_size=3), expected)


def test_a_copying_student_is_flagged_and_held_out_data_is_measured_against_the_teacher():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(400, 3, generator=g)
    teacher = torch.randn(400, 3, generator=g) * 1.5  # a broader, farther model
    copier = train[:200] + 0.01 * torch.randn(200, 3, generator=g)
    report = copy_report(copier, teacher, train)
    assert report["student_below_teacher_p5"] == 1.0 and report["student_median"] < report["teacher_median"]
    fair = copy_report(torch.randn(400, 3, generator=g) * 1.5, teacher, train)
    assert fair["student_below_teacher_p5"] < 0.15
    held_out = torch.randn(300, 3, generator=g)
    full = with_held_out(report, held_out, train, 100, seed=0)
    assert {k: full[k] for k in report} == report  # the student's and teacher's figures unchanged
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:100]
    d = nearest_distances(held_out[idx], train)
    assert full["held_out_below_teacher_p5"] == float((d < report["teacher_p5"]).float().mean())
    assert full["held_out_median"] == float(torch.quantile(d, 0.5))
    # real data from the training distribution lies nearer the training set than the broader teacher
    assert full["held_out_median"] < report["teacher_median"] and full["held_out_below_teacher_p5"] > 0.05


def test_mann_whitney_z_counts_the_pairs_where_the_generated_distance_is_larger():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(40, generator=g).round(decimals=1)  # rounded: ties between and within the samples
    b = (torch.randn(60, generator=g) + 0.5).round(decimals=1)
    u = float((a[:, None] > b[None]).sum() + 0.5 * (a[:, None] == b[None]).sum())
    m, n = 40, 60
    expected = (u - (m * n / 2 - 0.5)) / (m * n * (m + n + 1) / 12) ** 0.5
    assert mann_whitney_z(a, b) == pytest.approx(expected, rel=1e-12)
    assert mann_whitney_z(a, b) < -2  # a's distances are the smaller: "closer to the training set"


def test_the_data_copying_test_tells_copying_from_generalising_and_from_under_fitting():
    g = torch.Generator().manual_seed(3)
    train, held_out = torch.randn(2000, 4, generator=g), torch.randn(600, 4, generator=g)
    copier = train[torch.randperm(2000, generator=g)[:600]] + 0.05 * torch.randn(600, 4, generator=g)
    fresh = torch.randn(600, 4, generator=g)  # a model that learned the law itself
    broad = 1.6 * torch.randn(600, 4, generator=g)  # an under-fit one
    copies, fair, under = (data_copying(x, held_out, train, cells=5) for x in (copier, fresh, broad))
    assert copies["c_t"] < -10 and copies["z_u"] < -10
    assert abs(fair["c_t"]) < 3 and abs(fair["z_u"]) < 3
    assert under["c_t"] > 3 and under["z_u"] > 3
    assert copies["cells_used"] == 5 and len(copies["per_cell"]) == 5
    # a copier confined to one region: that cell's Z_U is negative whatever the others say
    near = (train - train[0]).norm(dim=1).argsort()[:150]  # 150 training points of one region
    local = torch.cat([fresh[:450], train[near] + 0.01 * torch.randn(150, 4, generator=g)])
    report = data_copying(local, held_out, train, cells=5)
    assert min(report["per_cell"]) < -3 and report["cells_used"] == 5


def test_with_held_out_adds_the_data_copying_test_of_the_student():
    g = torch.Generator().manual_seed(4)
    train, held_out, student = torch.randn(500, 3, generator=g), torch.randn(200, 3, generator=g), torch.randn(100, 3, generator=g)
    report = with_held_out(copy_report(student, torch.randn(100, 3, generator=g), train), held_out, train, 100, seed=1,
                           student=student, cells=4)
    idx = torch.randperm(200, generator=torch.Generator().manual_seed(1))[:100]
    assert report["data_copying"] == data_copying(student, held_out[idx], train, cells=4, seed=1)
    assert report["data_copying"]["cells_used"] >= 1 and report["data_copying"]["c_t"] == report["data_copying"]["c_t"]
