"""The copy check: nearest-training-image distances of student, teacher and real held-out samples."""

import torch

from onestep.evaluation.copy_check import copy_report, nearest_distances, with_held_out


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
