"""The two objectives do what they claim on the surrogate they were made against."""

import numpy as np
import pytest
import torch

from udp_datasets import Protector
from udp_datasets.images import decode_png_pixels
from udp_datasets.method.pgd import sample_generator

from conftest import TINY


def _surrogate_loss(protector: Protector, images: list[np.ndarray]) -> torch.Tensor:
    protector.prepare_surrogate()
    objective = protector.engine.objective
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    gens = [sample_generator(123, f"eval{i}") for i in range(len(images))]
    return objective.evaluate(x, gens, repeats=8)


@pytest.mark.parametrize("objective,surrogate_fixture", [
    ("unlearnable", "unlearnable_surrogate"), ("adversarial", "adversarial_surrogate")])
def test_objective_moves_the_surrogate_loss(objective, surrogate_fixture, photos32, request):
    folder = request.getfixturevalue(surrogate_fixture)
    # small t, where an 8/255 perturbation is visible to the denoiser (EUDP's point); the loss
    # is then measured under the very distribution the perturbation was optimised for
    config = TINY.replace(objective=objective, surrogate=folder, steps=20, timesteps="range", t_max=100)
    protector = Protector(config, progress=False)
    images = photos32[:8]
    protected = [decode_png_pixels(r.png) for r in protector.protect_images(images)]
    clean_loss = _surrogate_loss(protector, images)
    prot_loss = _surrogate_loss(protector, protected)
    if objective == "unlearnable":
        assert prot_loss.mean() < 0.97 * clean_loss.mean()
        assert (prot_loss < clean_loss).sum() >= 7
    else:
        assert prot_loss.mean() > 1.03 * clean_loss.mean()
        assert (prot_loss > clean_loss).sum() >= 7
