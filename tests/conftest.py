"""Shared fixtures: real images that ship with scikit-image, tiny surrogates saved with
diffusers' ``save_pretrained`` and loaded back through ``from_pretrained``.

The environment is pinned offline *before* any Hugging Face library is imported, so no
test can reach the network by accident.

Layout: ``tests/`` mirrors the package. ``tests/<part>/`` tests the folder ``udp_datasets/<part>/``
(models, sources, method, formats, records, jobs, publish, evaluate, cli); ``tests/test_<module>.py``
in this folder tests a top-level module (config, images, the protector) or the package as a whole
(architecture, golden bytes, hostile inputs), beside the shared helpers (this file, hostile.py,
hub_server.py, resumable.py, golden/). A test file goes where what it mainly tests lives.

There are no ``__init__.py`` files: pytest imports each test file by its basename (so basenames are
unique across folders), and this folder and every test folder are on ``sys.path``, so
``from hostile import ...``, ``from conftest import TINY`` and ``from test_verify import ...`` work
from any folder, whichever files a run selects.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _folder in sorted(p for p in _TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

_SESSION_TMP = tempfile.mkdtemp(prefix="udp-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HOME", os.path.join(_SESSION_TMP, "hf_home"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_SESSION_TMP, "hf_datasets"))
os.environ.setdefault("UDP_DATASETS_CACHE", os.path.join(_SESSION_TMP, "udp_cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from udp_datasets import ProtectionConfig, Protector  # noqa: E402
from udp_datasets.sources.bundled import faces, photo_crops  # noqa: E402

# Small but real: 16 px surrogate, a few rounds; enough to move the loss, seconds to fit.
TINY = ProtectionConfig(resolution=16, fit_rounds=3, fit_surrogate_steps=15, fit_pgd_steps=3,
                        fit_batch_size=16, steps=8, batch_size=8)


@pytest.fixture(scope="session")
def photos32() -> list[np.ndarray]:
    """16 real RGB photo crops, 32x32."""
    return photo_crops(32, per_photo=2)


@pytest.fixture(scope="session")
def grey_faces() -> list[np.ndarray]:
    """8 real grey face crops, 25x25x1."""
    return faces(8)


def _fit(objective: str, images, directory) -> Protector:
    protector = Protector(TINY.replace(objective=objective), progress=False)
    protector.fit(images, output_dir=directory)
    return protector


@pytest.fixture(scope="session")
def unlearnable_surrogate(tmp_path_factory, photos32) -> str:
    """Folder of a tiny surrogate fitted with the min-min objective on real photos."""
    directory = tmp_path_factory.mktemp("surrogates") / "unlearnable"
    _fit("unlearnable", photos32, directory)
    return str(directory)


@pytest.fixture(scope="session")
def adversarial_surrogate(tmp_path_factory, photos32) -> str:
    """Folder of a tiny surrogate trained on the clean photos (for the max objective)."""
    directory = tmp_path_factory.mktemp("surrogates") / "adversarial"
    _fit("adversarial", photos32, directory)
    return str(directory)


@pytest.fixture()
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster than two under load."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tiny_config(unlearnable_surrogate) -> ProtectionConfig:
    return TINY.replace(surrogate=unlearnable_surrogate)
