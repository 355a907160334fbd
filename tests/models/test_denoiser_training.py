"""The one training loop for latent denoisers lives in models/ (below method/ and evaluate/), the few-shot
study re-exports it, and a run resumed from a checkpoint ends with the same weights, bit for bit."""

from __future__ import annotations

import pytest
import torch

from udp_datasets.models.denoiser_training import LatentData, TrainRecipe, TrainState, build_unet, train_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_training_loop_lives_in_models_and_the_study_reexports_it():
    from udp_datasets.evaluate.victims import fewshot
    from udp_datasets.models import denoiser_training

    for name in ("TrainRecipe", "LatentData", "lr_factor", "train_unet", "build_unet", "FEWSHOT_UNETS",
                 "latent_statistics", "normalised_taef2", "raw_latents", "noise_schedule", "LATENT_CHANNELS"):
        assert getattr(fewshot, name) is getattr(denoiser_training, name), name


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_train_unet_resumed_from_a_checkpoint_gives_the_same_weights(ema):
    gen = torch.Generator().manual_seed(0)
    data = LatentData(torch.randn(6, 32, 4, 4, generator=gen), torch.randn(6, 32, 4, 4, generator=gen))
    recipe = TrainRecipe(steps=5, batch_size=3, learning_rate=1e-3, warmup_steps=2, cosine=True, ema=ema)
    whole, losses, _ = train_unet(build_unet("fewshot-surrogate", 4, seed=1).requires_grad_(True), data, recipe, 7)
    states: list[TrainState] = []
    train_unet(build_unet("fewshot-surrogate", 4, seed=1).requires_grad_(True), data,
               TrainRecipe(**{**recipe.to_dict(), "steps": 5}), 7, save_every=2, on_save=states.append)
    assert [s.step for s in states] == [2, 4, 5]
    resumed, resumed_losses, _ = train_unet(build_unet("fewshot-surrogate", 4, seed=9).requires_grad_(True), data,
                                            recipe, 7, resume=TrainState.from_dict(states[0].to_dict()))
    assert resumed_losses == losses
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
