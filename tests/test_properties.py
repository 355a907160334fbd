"""Property-based checks of the protector (hypothesis): over random image sizes, modes, budgets and
batch compositions, every output pixel is within the budget, the output differs from the input,
and the same inputs give the same bytes. Bounded (examples, no deadline) to stay well under a minute.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from udp_datasets import Protector
from udp_datasets.images import load_image
from udp_datasets.images import FailedImage, ProtectedImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ("RGB", "L", "RGBA", "LA", "P")
UNCHANGED = "left every pixel unchanged"  # the one refusal a random picture may earn (e.g. all white)


@st.composite
def images(draw):
    """An encoded PNG of random size and mode, with random (unsaturated or not) content."""
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    lo = draw(st.sampled_from([0, 40]))
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "LA": 2, "P": 3}[mode]
    arr = rng.integers(lo, 256 - lo, (h, w, channels), dtype=np.uint8)
    image = Image.fromarray(arr[:, :, 0] if channels == 1 else arr, None if mode == "P" else mode)
    if mode == "P":
        image = image.quantize(8)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def surrogate(unlearnable_surrogate):
    return unlearnable_surrogate


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(images(), min_size=1, max_size=5), levels=st.integers(1, 16), batch_size=st.integers(1, 4),
       batch_pixels=st.sampled_from([0, 300, 2000]), seed=st.integers(0, 3))
def test_budget_change_and_determinism(tiny_config, batch, levels, batch_size, batch_pixels, seed):
    config = tiny_config.replace(epsilon=levels / 255, steps=2, batch_size=batch_size, batch_pixels=batch_pixels,
                                 seed=seed, random_start=seed % 2 == 1)
    keys = [f"k{i}" for i in range(len(batch))]
    first = Protector(config, progress=False).protect_images(batch, keys=keys)
    again = Protector(config, progress=False).protect_images(batch, keys=keys)
    for data, result, repeat in zip(batch, first, again):
        clean = load_image(data)
        h, w = clean.pixels.shape[:2]
        if isinstance(result, FailedImage):  # only an image over the pixel budget, or one rounding to itself
            assert (batch_pixels and w * h > batch_pixels) or UNCHANGED in result.reason, result.reason
            assert isinstance(repeat, FailedImage) and repeat.reason == result.reason
            continue
        assert isinstance(result, ProtectedImage)
        out = load_image(result.png)
        diff = np.abs(out.pixels.astype(int) - clean.pixels.astype(int))
        assert out.pixels.shape == clean.pixels.shape
        assert diff.max() <= levels and result.linf == diff.max() >= 1  # every pixel in budget; changed
        if clean.alpha is not None:
            assert np.array_equal(out.alpha, clean.alpha)  # transparency is never perturbed
        assert isinstance(repeat, ProtectedImage) and repeat.png == result.png  # deterministic
