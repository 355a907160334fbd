import numpy as np
import pytest
import torch

from udp_datasets.method.budget import Budget, BudgetError
from udp_datasets.method.pgd import pgd, sample_generator


def test_quantization_holds_budget_on_every_pixel_including_edges():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    clean[:4] = 0
    clean[-4:] = 255
    for levels in (1, 4, 8, 16):
        # a float perturbation slightly *over* budget, as rounding can produce
        noise = rng.uniform(-(levels + 0.9), levels + 0.9, size=clean.shape) / 255
        out = Budget(levels).quantize(clean, clean / 255 + noise)
        diff = np.abs(out.astype(int) - clean.astype(int))
        assert out.dtype == np.uint8 and diff.max() <= levels
        assert diff.max() == levels  # the budget is used, not wasted


def test_budget_check_rejects_over_budget_and_shape_changes():
    clean = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(BudgetError, match="exceeds the budget"):
        Budget(8).check(clean, clean + 9)
    with pytest.raises(BudgetError, match="shape"):
        Budget(8).check(clean, np.zeros((4, 5, 3), dtype=np.uint8))
    assert Budget(8).check(clean, clean + 8) == 8


def test_pgd_projects_and_moves_in_the_asked_direction():
    x = torch.rand(3, 3, 8, 8)
    target = torch.rand(3, 3, 8, 8)

    def loss(x_adv, step):
        return (x_adv - target).pow(2).flatten(1).mean(1)

    eps = 4 / 255
    down = pgd(x, loss, epsilon=eps, alpha=1 / 255, steps=10, maximize=False)
    up = pgd(x, loss, epsilon=eps, alpha=1 / 255, steps=10, maximize=True)
    for d in (down, up):
        assert d.abs().max() <= eps + 1e-7
        assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    base = loss(x, 0)
    assert (loss(x + down, 0) < base).all() and (loss(x + up, 0) > base).all()


def test_pgd_rejects_a_batch_loss():
    with pytest.raises(ValueError, match="one loss per sample"):
        pgd(torch.rand(2, 3, 4, 4), lambda x, s: x.sum(), epsilon=0.1, alpha=0.01, steps=1, maximize=True)


def test_sample_generators_are_keyed():
    a = torch.rand(5, generator=sample_generator(0, "k1"))
    b = torch.rand(5, generator=sample_generator(0, "k1"))
    c = torch.rand(5, generator=sample_generator(0, "k2"))
    d = torch.rand(5, generator=sample_generator(1, "k1"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
