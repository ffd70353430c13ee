"""Workshop 5's checkers (`asru_lab.workshop.forget`): a right shrink-and-perturb passes, each
usual mistake gets its own hint and leaves the teacher as it was; a missing student is a hint."""

from __future__ import annotations

import math

import pytest
import torch

from asru_lab import workshop
from asru_lab.stages.distill import perturbed_copy


def right(lm, alpha, beta, seed):
    return perturbed_copy(lm, alpha, beta, seed)  # the library's own: it must pass


def in_place(lm, alpha, beta, seed):
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(1 - alpha)
    return lm.clone()


def no_noise(lm, alpha, beta, seed):
    student = lm.clone()
    with torch.no_grad():
        for p in student.model.parameters():
            p.mul_(1 - alpha)
    return student


def unseeded(lm, alpha, beta, seed):
    student = lm.clone()
    with torch.no_grad():
        for p in student.model.parameters():
            if p.dim() >= 2:
                bound = math.sqrt(6 / (p.shape[0] + p[0].numel()))
                p.mul_(1 - alpha).add_(alpha * beta * (torch.rand(p.shape) * 2 - 1) * bound)
            else:
                p.mul_(1 - alpha)
    return student


def test_the_librarys_shrink_and_perturb_passes(lm):
    feedback = workshop.check_perturbed(right, lm, strict=True)
    assert feedback.passed and str(feedback).startswith("correct ✓")


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (None, "still None"),
        (lambda lm, a, b, s: lm, "the teacher itself"),
        (in_place, "the teacher changed"),
        (no_noise, "spread"),
        (unseeded, "two calls with seed 0 differ"),
        (lambda lm, a, b, s: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_each_mistake_gets_its_hint_and_the_teacher_is_kept(lm, answer, hint):
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    feedback = workshop.check_perturbed(answer, lm)
    assert not feedback.passed and hint in str(feedback), str(feedback)
    assert all(p.equal(before[n]) for n, p in lm.model.named_parameters())
    with pytest.raises(workshop.WorkshopCheckError, match=hint):
        workshop.check_perturbed(answer, lm, strict=True)


def test_a_missing_student_is_a_hint_not_an_error(lm, bench):
    items = workshop.example_sets(bench, n_examples=4)["forget_held_out"]
    feedback = workshop.check_forgotten(None, lm, bench, probe=None, items=items)
    assert not feedback.passed and "ALPHA" in str(feedback)
