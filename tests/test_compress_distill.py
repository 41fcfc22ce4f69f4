"""The distillation loss: alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * CE."""
import pytest
import torch
import torch.nn.functional as F

from optlab.compress.training import distillation_loss


def logits(seed, n=6, classes=10):
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed))


def grad_wrt_student(student, teacher, labels, **kw):
    s = student.clone().requires_grad_(True)
    distillation_loss(s, teacher, labels, **kw).backward()
    return s.grad


def test_the_teacher_logits_change_the_gradient_the_student_gets():
    student, labels = logits(0), torch.arange(6) % 10
    g1 = grad_wrt_student(student, logits(1), labels)
    g2 = grad_wrt_student(student, logits(2), labels)
    plain = grad_wrt_student(student, None, labels)
    assert not torch.allclose(g1, g2, atol=1e-4)
    assert not torch.allclose(g1, plain, atol=1e-4)


def test_the_soft_term_pulls_the_student_towards_the_teacher_distribution():
    # With alpha = 1 the gradient is T * (softmax(s/T) - softmax(t/T)) / N: zero only at the teacher.
    student, teacher, labels, T = logits(0), logits(1), torch.zeros(6, dtype=torch.long), 3.0
    g = grad_wrt_student(student, teacher, labels, temperature=T, alpha=1.0)
    expected = T * (F.softmax(student / T, 1) - F.softmax(teacher / T, 1)) / len(student)
    assert torch.allclose(g, expected, atol=1e-6)


def test_the_loss_value_follows_the_formula():
    student, teacher, labels, T, alpha = logits(0), logits(1), torch.arange(6) % 10, 4.0, 0.7
    p_t = F.softmax(teacher / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / T, 1))).sum(1).mean()
    expected = alpha * T ** 2 * kl + (1 - alpha) * F.cross_entropy(student, labels)
    got = distillation_loss(student, teacher, labels, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_without_a_teacher_or_with_alpha_zero_it_is_cross_entropy():
    student, labels = logits(0), torch.arange(6) % 10
    ce = F.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.allclose(distillation_loss(student, None, labels, label_smoothing=0.1), ce)
    assert torch.allclose(distillation_loss(student, logits(1), labels, alpha=0.0, label_smoothing=0.1), ce)


def test_no_gradient_flows_into_the_teacher():
    teacher = logits(1).requires_grad_(True)
    distillation_loss(logits(0).requires_grad_(True), teacher, torch.zeros(6, dtype=torch.long)).backward()
    assert teacher.grad is None
