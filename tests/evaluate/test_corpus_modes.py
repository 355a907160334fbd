"""How a user's corpus folder is read (``--corpus-mode``): log-uniform crops (photographs) or whole images
(folders of whole shapes, which a crop would cut apart), and what the provenance says about it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from udp_datasets.config import ConfigError
from udp_datasets.evaluate.subjects import BUNDLED_CORPUS, GLYPH_CORPUS, folder_corpus, read_corpus, square


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(40, 60), (64, 64), (90, 50), (32, 32), (70, 80)]):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
        images.append(a)
    return tmp_path, images


def test_whole_mode_keeps_every_image_as_its_central_square(folder):
    path, images = folder
    corpus = folder_corpus(path, count=3000, size=32, mode="whole")
    assert len(corpus) == len(images)  # never repeated up to the count
    expected = sorted(square(a, 32).tobytes() for a in images)
    assert sorted(a.tobytes() for a in corpus) == expected


def test_whole_mode_takes_a_seeded_subset_when_the_folder_is_larger_than_count(folder):
    path, _ = folder
    first, again = (folder_corpus(path, count=3, seed=7, size=32, mode="whole") for _ in range(2))
    assert len(first) == 3 and [a.tobytes() for a in first] == [a.tobytes() for a in again]
    whole = [a.tobytes() for a in folder_corpus(path, count=10, size=32, mode="whole")]
    assert len(set(a.tobytes() for a in first)) == 3 and all(a.tobytes() in whole for a in first)


def test_crops_mode_is_the_default_and_gives_count_crops(folder):
    path, _ = folder
    crops = folder_corpus(path, count=12, seed=1, size=32)
    assert len(crops) == 12 and all(a.shape == (32, 32, 3) for a in crops)
    assert [a.tobytes() for a in crops] == [a.tobytes() for a in folder_corpus(path, 12, 1, 32, mode="crops")]
    with pytest.raises(ValueError, match="choose from crops, whole"):
        folder_corpus(path, mode="resize")


def test_read_corpus_records_the_mode_and_refuses_one_for_the_bundled_photographs(folder):
    path, images = folder
    got, record = read_corpus(str(path), count=100, seed=0, size=32, mode="whole")
    assert len(got) == len(images) and record["mode"] == "whole" and "central square" in record["reader"]
    assert record["description"] == f"folder {path}, read as the central square of each image (--corpus-mode whole)"
    _, record = read_corpus(str(path), count=4, seed=0, size=32)
    assert record["mode"] == "crops" and "log-uniform crops" in record["reader"]
    for source in (BUNDLED_CORPUS, GLYPH_CORPUS):
        with pytest.raises(ConfigError, match="always read one way"):
            read_corpus(source, count=4, seed=0, size=32, mode="whole")


def test_read_corpus_describes_the_generated_glyphs_as_the_report_and_the_provenance_both_say():
    from udp_datasets.evaluate.glyphs import glyph_corpus

    got, record = read_corpus(GLYPH_CORPUS, count=3, seed=2, size=32)
    assert [a.tobytes() for a in got] == [a.tobytes() for a in glyph_corpus(3, 2, 32)]
    assert record["description"] == "generated glyphs (letters and digits)" and record["mode"] == "generated"
    assert "glyph_corpus" in record["reader"] and record["crop_seed"] == 2 and record["size"] == 32


def test_a_folder_named_like_a_built_in_corpus_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / GLYPH_CORPUS).mkdir()
    with pytest.raises(ConfigError, match=r"write \./glyphs for the folder"):
        read_corpus(GLYPH_CORPUS, count=3, seed=0, size=32)
    # the default corpus of a study (the user named none) is never ambiguous
    got, record = read_corpus(GLYPH_CORPUS, count=3, seed=0, size=32, named_by_user=False)
    assert len(got) == 3 and record["mode"] == "generated"


def test_cli_pretrain_reads_a_whole_image_corpus_and_says_so(folder, tmp_path):
    import json

    from udp_datasets.cli.app import main
    from udp_datasets.models.pair_pretraining import PROVENANCE_FILE

    path, images = folder
    out = tmp_path / "pair"
    assert main(["pretrain", str(path), str(out), "--corpus-mode", "whole", "--size", "32", "--steps", "1",
                 "--batch-size", "2"]) == 0
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["corpus"]["mode"] == "whole" and record["corpus"]["count"] == len(images)
    assert main(["pretrain", "bundled", str(tmp_path / "b"), "--corpus-mode", "whole"]) == 2  # usage error
