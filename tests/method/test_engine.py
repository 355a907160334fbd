"""The Protector's parts (issue 21): the quantised budget, the tensor engine, the surrogate session, batching with
its out-of-memory retry, the quarantine file, and the generator's weight hash in the fingerprint and the records.

The Protector's own behaviour (map, quarantine, pickling, cache hits) is tests/test_protector_map.py; its bytes
are tests/test_golden_outputs.py."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import datasets
import numpy as np
import pytest
from PIL import Image

from udp_datasets import ImageError, ProtectionConfig, Protector
from udp_datasets.method.batches import out_of_memory, run_batches
from udp_datasets.method.budget import Budget, BudgetError
from udp_datasets.method.generator import PerturbationGenerator, save_generator
from udp_datasets.models import weights_sha256
from udp_datasets.models.session import SurrogateSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _generator(folder, seed: int) -> str:
    save_generator(PerturbationGenerator(width=4, seed=seed), folder)
    return str(folder)


# ------------------------------------------------------------------ the budget
def test_one_quantised_budget_from_the_config():
    for epsilon, levels in ((8 / 255, 8), (0.0314, 8), (16 / 255, 16), (4.4 / 255, 4)):
        config = ProtectionConfig(epsilon=epsilon)
        budget = Budget.of(config)
        assert budget.levels == config.budget_levels == levels and budget.epsilon == levels / 255.0
    with pytest.raises(Exception):
        budget.levels = 3  # frozen: one value, never re-derived
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="whole number of grey levels"):
            Budget(bad)


def test_the_engine_proves_the_budget_on_8_bit_pixels(tiny_config):
    engine = Protector(tiny_config.replace(epsilon=4 / 255), progress=False).engine
    clean = np.full((3, 5, 3), 100, dtype=np.uint8)
    out, linf = engine.prove(clean, clean / 255.0 + 0.5)  # far over the budget: re-projected onto it
    assert linf == 4 and out.max() == 104
    with pytest.raises(BudgetError, match="exceeds the budget of 4"):
        engine.budget.check(clean, clean + 5)


# ------------------------------------------------------------------ batches
def test_run_batches_retries_image_by_image_after_running_out_of_memory():
    done, gave_up = {}, []

    def optimise(batch):
        if len(batch) > 1 or batch == [3]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in batch]

    def finish(batch, result):
        done.update(zip(batch, result))

    for overlap in (False, True):
        done.clear(), gave_up.clear()
        run_batches([[0, 1], [2, 3], [4]], optimise, finish, lambda j, exc: gave_up.append(j), overlap=overlap)
        assert done == {0: 0, 1: 10, 2: 20, 4: 40} and gave_up == [3]
    with pytest.raises(RuntimeError, match="a bug"):  # anything but an allocation failure propagates
        run_batches([[0]], lambda b: (_ for _ in ()).throw(RuntimeError("a bug")), finish, lambda j, e: None)
    assert out_of_memory(MemoryError()) and not out_of_memory(ValueError("out of range"))


# ------------------------------------------------------------------ the session
def test_the_session_pickles_as_config_and_weight_hash_and_rebuilds_the_objective(tiny_config, photos32, tmp_path):
    session = SurrogateSession(tiny_config)
    assert session.ref is not None and session.ref.sha256 == weights_sha256(tiny_config.surrogate)
    surrogate = session.prepare()
    assert session.prepare() is surrogate and session.generation == 1  # loaded and tuned once
    clone = pickle.loads(pickle.dumps(session))
    assert clone.surrogate is None and clone.ref == session.ref and clone.config == session.config
    assert clone.generation == 0 and clone.prepare() is not surrogate

    protector = Protector(tiny_config.replace(surrogate=None), progress=False)
    protector.fit(photos32[:4], output_dir=tmp_path / "a")
    first = protector.engine.objective
    assert protector.config.surrogate == str((tmp_path / "a").resolve()) and protector.surrogate_ref.sha256
    protector.fit(photos32[4:8], output_dir=tmp_path / "b")  # a new surrogate: the engine builds a new objective
    assert protector.engine.objective is not first and protector.engine.objective.surrogate is protector.engine.session.surrogate


def test_surrogate_method_of_0_2_is_gone(tiny_config):
    assert not hasattr(Protector(tiny_config), "surrogate")


# ------------------------------------------------------------------ quarantine and the path rule
def test_quarantine_file_and_path_only_entries(tiny_config, tmp_path, photos32):
    errors = tmp_path / "q" / "errors.jsonl"
    protector = Protector(tiny_config, errors="quarantine", errors_file=errors, progress=False)
    outside = tmp_path / "outside.png"
    Image.fromarray(photos32[0]).save(outside)
    batch = {"image": [{"bytes": None, "path": str(outside)}, {"bytes": b"junk", "path": None}], "id": ["a", "b"]}
    out = protector(batch, [7, 8])
    assert out == {"image": [], "id": []}
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [r["index"] for r in records] == [7, 8] and "image_root=FOLDER" in records[0]["reason"]
    with pytest.raises(ImageError, match="not a readable image"):
        Protector(tiny_config, progress=False)({"image": [b"junk"]})
    rooted = Protector(tiny_config, image_root=tmp_path, progress=False)  # inside image_root: opened
    assert len(rooted({"image": [{"bytes": None, "path": "outside.png"}]})["image"]) == 1


# ------------------------------------------------------------------ the generator's weights (issue 19 leftover)
def test_generator_weights_are_in_the_fingerprint(tiny_config, tmp_path):
    folder = tmp_path / "gen"
    config = tiny_config.replace(engine="generator", generator=_generator(folder, 1))
    before = datasets.fingerprint.Hasher.hash(Protector(config, progress=False))
    assert before == datasets.fingerprint.Hasher.hash(Protector(config, progress=False))
    assert Protector(config).engine.generator_sha256 == weights_sha256(folder)
    _generator(folder, 2)  # retrained in place: same config, other weights
    after = Protector(config, progress=False)
    assert datasets.fingerprint.Hasher.hash(after) != before
    assert datasets.fingerprint.Hasher.hash(pickle.loads(pickle.dumps(after))) == datasets.fingerprint.Hasher.hash(after)
    pgd = Protector(tiny_config, progress=False).engine
    assert pgd.generator_sha256 is None and pgd.generator_ref is None and "generator_sha256" not in pgd.__getstate__()


def test_generator_weights_are_in_the_job_records(tiny_config, tmp_path, photos32):
    from udp_datasets.jobs.dataset_job import protect_dataset
    from udp_datasets.jobs.shard_job import job_hash, run_shards
    from udp_datasets.records.names import RECORD_FILE

    gen = _generator(tmp_path / "gen", 3)
    config = tiny_config.replace(engine="generator", generator=gen)
    want = {"source": gen, "sha256": weights_sha256(gen)}
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, arr in enumerate(photos32[:3]):
        Image.fromarray(arr).save(folder / f"{i}.png")
    protect_dataset(str(folder), tmp_path / "dataset_job", config)
    assert json.loads((tmp_path / "dataset_job" / RECORD_FILE).read_text())["generator"] == want

    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "part-000000.tar", "w") as tar:
        for i, arr in enumerate(photos32[:2]):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            info = tarfile.TarInfo(f"k{i}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    summary = run_shards(str(tmp_path / "tars"), tmp_path / "shard_job", config, progress=False)
    assert summary.generator == want and json.loads(open(summary.record_file).read())["generator"] == want
    # the job id (what a resumed shard is checked against) changes with the weights, and not for PGD
    ids = {job_hash(config, None, image_column=None, key_column=None, image_extensions=["png"], generator_sha256=s)
           for s in (None, "a" * 64, "b" * 64)}
    assert len(ids) == 3
