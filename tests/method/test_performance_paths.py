"""The transform's speed switches (issue 14): correctness only, no timing.

Each optimised path must stay within the budget and agree with the reference path (float32,
contiguous, one batch per exact shape, fresh buffers, no background thread): the switches that
only reorganise work (``freeze``, ``reuse_buffers``, ``mixed_shapes``, ``overlap``, ``sdpa``) give
the same bytes; those that change rounding (``channels_last``, ``autocast``, ``compile``) must move
the surrogate loss the same way, and their pixel agreement with the reference is measured and
printed (``-s`` shows it; benchmarks/bench_protect.py records it too). Every combination of the
switches runs. The pixel budget (``batch_pixels``) bounds batches and quarantines, by name, an
image that cannot fit on its own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from udp_datasets import ProtectionConfig, Protector
from udp_datasets.images import decode_png_pixels
from udp_datasets.method.batches import plan_batches
from udp_datasets.method.pgd import sample_generator
from udp_datasets.models import runtime
from udp_datasets.images import FailedImage, ProtectedImage
from udp_datasets.sources.bundled import faces, photo_crops

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFERENCE = dict(freeze=True, reuse_buffers=False, mixed_shapes=False, overlap=False, sdpa=True,
                 channels_last=False, autocast="off", compile=False)
SAME_BYTES = ("reuse_buffers", "mixed_shapes", "overlap", "freeze", "sdpa")


def mixed_images() -> list[np.ndarray]:
    """Real images of several sizes and modes: RGB photo crops 32 and 24 px, grey faces 25 px."""
    return photo_crops(32, per_photo=1)[:3] + photo_crops(24, per_photo=1)[:2] + faces(2)


def protect(config: ProtectionConfig, images, **tuning) -> list:
    protector = Protector(config, progress=False, tuning={**REFERENCE, **tuning})
    out = protector.protect_images(images, keys=[f"k{i}" for i in range(len(images))])
    assert all(isinstance(r, ProtectedImage) for r in out), [getattr(r, "reason", "") for r in out]
    return out


def pixels(results) -> list[np.ndarray]:
    return [decode_png_pixels(r.png) for r in results]


def agreement(a, b) -> float:
    """Fraction of output pixel values that are identical in two runs."""
    same = sum(int((x == y).sum()) for x, y in zip(pixels(a), pixels(b)))
    return same / sum(x.size for x in pixels(a))


def loss_change(config: ProtectionConfig, images, results) -> float:
    """Mean change of the surrogate's loss from clean to protected (fixed draws per image)."""
    protector = Protector(config, progress=False)
    surrogate = protector.prepare_surrogate()
    objective = protector.engine.objective
    changes = []
    for i, (clean, out) in enumerate(zip(images, pixels(results))):
        x = torch.from_numpy(np.stack([clean])).permute(0, 3, 1, 2).float().div(255).to(surrogate.device)
        y = torch.from_numpy(np.stack([out])).permute(0, 3, 1, 2).float().div(255).to(surrogate.device)
        before = objective.evaluate(x, [sample_generator(99, f"e{i}")], repeats=8, clean=x)
        after = objective.evaluate(y, [sample_generator(99, f"e{i}")], repeats=8, clean=x)
        changes.append(float(after - before))
    return float(np.mean(changes))


# ------------------------------------------------------------------ batching plan
def test_plan_keeps_equal_shapes_in_order_and_respects_both_bounds():
    shapes = [(32, 32, 3)] * 6 + [(64, 64, 3)] * 2 + [(10, 10, 1), (12, 8, 3), (500, 500, 3)]
    batches, too_big = plan_batches(shapes, batch_size=4, batch_pixels=64 * 64 * 2, mixed=True)
    assert too_big == [10]
    assert batches[0] == [0, 1, 2, 3]  # a full batch of one shape is cut exactly as before
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len(b) <= 4 and sum(shapes[i][0] * shapes[i][1] for i in b) <= 64 * 64 * 2
    unmixed, _ = plan_batches(shapes, batch_size=4, batch_pixels=64 * 64 * 2, mixed=False)
    assert all(len({shapes[i] for i in b}) == 1 for b in unmixed)
    assert len(batches) < len(unmixed)  # leftovers of different sizes share batches


def test_plan_puts_a_folder_of_unique_sizes_into_full_batches():
    shapes = [(20 + i, 30 + i, 3) for i in range(16)]
    batches, too_big = plan_batches(shapes, batch_size=8, batch_pixels=10 ** 9)
    assert not too_big and [len(b) for b in batches] == [8, 8]
    assert plan_batches(shapes, batch_size=8, batch_pixels=10 ** 9, mixed=False)[0] == [[i] for i in range(16)]


# ------------------------------------------------------------------ bytes that must not change
@pytest.mark.parametrize("switch", SAME_BYTES)
def test_work_reorganising_switches_give_the_reference_bytes(tiny_config, switch):
    images = mixed_images()
    config = tiny_config.replace(batch_size=4)
    flipped = {"reuse_buffers": True, "mixed_shapes": True, "overlap": True, "freeze": False, "sdpa": False}
    ref = protect(config, images)
    got = protect(config, images, **{switch: flipped[switch]})
    assert [r.sha256 for r in got] == [r.sha256 for r in ref]


def test_mixed_batches_match_per_shape_batches_with_random_start_and_clusters(photos32, tmp_path):
    fit_config = ProtectionConfig(resolution=16, fit_rounds=1, fit_surrogate_steps=3, fit_pgd_steps=1,
                                  fit_batch_size=8, steps=3, batch_size=8, clusters=2, random_start=True)
    protector = Protector(fit_config, progress=False)
    protector.fit(photos32[:8], output_dir=tmp_path / "clustered")
    config = protector.config
    images = mixed_images()
    assert [r.sha256 for r in protect(config, images, mixed_shapes=True)] == \
        [r.sha256 for r in protect(config, images)]


# ------------------------------------------------------------------ rounding-changing switches
@pytest.mark.parametrize("tuning", [dict(channels_last=True), dict(autocast="bfloat16"),
                                    dict(autocast="bfloat16", channels_last=True), dict(autocast="float16")],
                         ids=["channels_last", "bf16", "bf16+channels_last", "fp16"])
def test_precision_switches_move_the_loss_like_the_reference(adversarial_surrogate, tuning):
    config = ProtectionConfig(surrogate=adversarial_surrogate, objective="adversarial", resolution=16, steps=8,
                              batch_size=8)
    images = photo_crops(32, per_photo=1)[:6]
    ref = protect(config, images)
    got = protect(config, images, **tuning)
    ref_change, got_change = loss_change(config, images, ref), loss_change(config, images, got)
    share = agreement(ref, got)
    print(f"\n{tuning}: pixel agreement with float32 {share:.3f}; loss change {got_change:+.6f} "
          f"(reference {ref_change:+.6f})")
    assert ref_change > 0 and got_change > 0  # the adversarial objective raises the loss on both paths
    assert max(r.linf for r in got) <= config.budget_levels


def test_latent_paths_agree_mixed_sizes_and_bf16(tmp_path):
    from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair

    save_tiny_latent_pair(tmp_path / "latent", image_size=32, seed=3)
    config = ProtectionConfig(surrogate=str(tmp_path / "latent"), objective="adversarial", encoder_weight=1.0,
                              steps=4, batch_size=8)
    images = mixed_images()
    ref = protect(config, images)
    assert [r.sha256 for r in protect(config, images, mixed_shapes=True, reuse_buffers=True, overlap=True)] == \
        [r.sha256 for r in ref]
    fast = protect(config, images, mixed_shapes=True, autocast="bfloat16", channels_last=True)
    print(f"\nlatent bf16+channels_last: pixel agreement {agreement(ref, fast):.3f}")
    assert loss_change(config, images, fast) > 0 and loss_change(config, images, ref) > 0


# ------------------------------------------------------------------ every combination runs
def test_every_switch_combination_runs_within_the_budget(tiny_config):
    images = mixed_images()
    config = tiny_config.replace(steps=2, batch_size=4)
    names = ("freeze", "reuse_buffers", "mixed_shapes", "overlap", "sdpa", "channels_last")
    for values in itertools.product((False, True), repeat=len(names)):
        for precision in ("off", "bfloat16"):
            out = protect(config, images, **dict(zip(names, values)), autocast=precision)
            assert len(out) == len(images) and max(r.linf for r in out) <= config.budget_levels


def test_compile_path_runs_and_agrees(tiny_config, monkeypatch):
    """torch.compile through dynamo and AOT autograd (the inductor code generation itself takes minutes
    on a CPU; benchmarks/bench_protect.py measures it)."""
    monkeypatch.setattr(runtime, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    images = photo_crops(32, per_photo=1)[:4]
    config = tiny_config.replace(steps=2, batch_size=4)
    ref = protect(config, images)
    got = protect(config, images, compile=True)
    print(f"\ncompile (aot_eager): pixel agreement {agreement(ref, got):.3f}")
    assert max(r.linf for r in got) <= config.budget_levels


# ------------------------------------------------------------------ the pixel budget
def test_an_image_over_the_pixel_budget_is_quarantined_by_name(tiny_config, tmp_path):
    images = photo_crops(32, per_photo=1)[:3] + [photo_crops(64, per_photo=1)[0]]
    config = tiny_config.replace(batch_pixels=32 * 32 * 2, steps=2)
    out = Protector(config, progress=False).protect_images(images, keys=["a", "b", "c", "big"])
    assert [type(r) for r in out] == [ProtectedImage] * 3 + [FailedImage]
    assert out[3].key == "big" and "image big is 64x64 = 4096 pixels" in out[3].reason
    assert "batch_pixels" in out[3].reason
    unnamed = Protector(config, progress=False).protect_images(images, names=["a.png", "b.png", "c.png", "big.png"])
    assert isinstance(unnamed[3], FailedImage) and "image big.png is 64x64" in unnamed[3].reason

    import datasets
    from PIL import Image

    errors = tmp_path / "errors.jsonl"
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "id": ["a", "b", "c", "big"]})
    ds = ds.cast_column("image", datasets.Image())
    protector = Protector(config, key_column="id", errors="quarantine", errors_file=errors, progress=False)
    kept = ds.map(protector, batched=True, batch_size=4)
    assert kept["id"] == ["a", "b", "c"] and '"key": "big"' in errors.read_text()


def test_auto_settings_per_device():
    cpu = torch.device("cpu")
    tuning = runtime.resolve_tuning(ProtectionConfig(), cpu, "pixel")
    assert tuning.autocast == "off" and not tuning.channels_last and tuning.batch_pixels >= runtime.MIN_AUTO_PIXELS
    assert runtime.resolve_tuning(ProtectionConfig(autocast="bfloat16", batch_pixels=7), cpu, "pixel").batch_pixels == 7
    half = runtime.resolve_tuning(ProtectionConfig(autocast="bfloat16"), cpu, "latent", torch.float16)
    assert half.autocast == "off"  # half-precision weights already run in half precision
    assert runtime.resolve_tuning(ProtectionConfig(channels_last="on"), cpu, "pixel").channels_last
    latent = runtime.resolve_tuning(ProtectionConfig(), cpu, "latent")
    if runtime.native_bf16_cpu():  # latent surrogates on a CPU with bf16 in hardware: 2-3x (docs/performance.md)
        assert latent.autocast == "bfloat16" and latent.channels_last
    else:
        assert latent.autocast == "off" and not latent.channels_last


# ------------------------------------------------------------------ fit: no repeated work
def test_latent_fit_encodes_each_image_once_per_round_with_the_same_result(tmp_path, monkeypatch):
    from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair
    from udp_datasets.method import fit as fit_module

    save_tiny_latent_pair(tmp_path / "latent", image_size=32, seed=3)
    config = ProtectionConfig(surrogate=str(tmp_path / "latent"), objective="unlearnable", fit_rounds=2,
                              fit_surrogate_steps=4, fit_pgd_steps=1, fit_batch_size=4, steps=1)
    images = photo_crops(32, per_photo=1)[:6]
    encoded: list[int] = []
    original = fit_module.LatentCache.__call__

    def counting(self, idx):
        encoded.extend(i for i in idx.tolist() if i not in self.latents)
        return original(self, idx)

    monkeypatch.setattr(fit_module.LatentCache, "__call__", counting)
    cached = Protector(config, progress=False)
    cached.fit(images, output_dir=tmp_path / "cached")
    assert len(encoded) <= 2 * len(images)  # at most once per image and round (was 2 rounds x 4 steps x 4)
    monkeypatch.setattr(fit_module, "LatentCache", lambda surrogate, data: None)
    every_step = Protector(config, progress=False)
    every_step.fit(images, output_dir=tmp_path / "every_step")
    # the same latents up to float rounding (a batch of one takes another oneDNN kernel: ~1e-7)
    ours, theirs = cached.prepare_surrogate().unet.state_dict(), every_step.prepare_surrogate().unet.state_dict()
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-4
    for a, b in zip(cached.fit_result.history, every_step.fit_result.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_fit_pgd_next_round_skips_only_work_no_training_uses(photos32, tmp_path, monkeypatch):
    from udp_datasets.method import fit as fit_module

    base = ProtectionConfig(resolution=16, fit_rounds=3, fit_surrogate_steps=3, fit_pgd_steps=2, fit_batch_size=8,
                            steps=2, batch_size=4, seed=5)
    # every image is drawn every round (8 images, batches of 8): the same deltas, hence the same weights
    full = Protector(base, progress=False)
    full.fit(photos32[:8], output_dir=tmp_path / "all")
    lazy = Protector(base.replace(fit_pgd_scope="next_round"), progress=False)
    lazy.fit(photos32[:8], output_dir=tmp_path / "next")
    assert full.surrogate_ref.sha256 == lazy.surrogate_ref.sha256
    assert base.hash() == ProtectionConfig(**{**base.to_dict(), "fit_pgd_scope": "all"}).hash()

    # more images than a round draws: each round's PGD covers only the next round's draws
    sizes: list[int] = []
    original = fit_module._pgd_round

    def counting(*args, subset=None, **kwargs):
        sizes.append(len(subset) if subset is not None else args[3].shape[0])
        return original(*args, subset=subset, **kwargs)

    monkeypatch.setattr(fit_module, "_pgd_round", counting)
    config = base.replace(fit_pgd_scope="next_round", fit_surrogate_steps=1, fit_batch_size=4)
    Protector(config, progress=False).fit(photos32, output_dir=tmp_path / "big")
    assert len(sizes) == 3 and all(n <= 4 for n in sizes)


def test_next_round_draws_are_the_indices_training_draws(photos32):
    """The replay on a copy of the generator predicts the batches exactly and leaves the generator alone."""
    from udp_datasets.method import fit as fit_module
    from udp_datasets.models import load_surrogate

    config = ProtectionConfig(resolution=16, fit_surrogate_steps=5, fit_batch_size=4)
    surrogate = load_surrogate(config=config)
    data = fit_module.images_to_tensor(photos32, surrogate.image_size, 3)
    gen = torch.Generator().manual_seed(3)
    predicted = fit_module.next_round_draws(gen, data.shape[0], config, surrogate)
    drawn: set[int] = set()
    original = torch.randperm

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.update(out[:config.fit_batch_size].tolist())
        return out

    torch.randperm = spy
    try:
        for _ in range(config.fit_surrogate_steps):
            fit_module._batch_loss(surrogate, data, config.fit_batch_size, gen, None)
    finally:
        torch.randperm = original
    assert predicted == sorted(drawn) and len(predicted) < data.shape[0]
