"""Property tests over the tar and Parquet paths (issue 20): random member sets, extensions and
payloads; random column layouts. The invariant: every output image differs from its source within
the budget, and nothing unprotected reaches the output (a member or cell whose name or bytes say
image is either a protected PNG of an input image, or its sample is gone). Bounded examples and
tiny images, 2 PGD steps; the shard job runs in-process.
"""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from itertools import count

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import hostile
from conftest import TINY
from udp_datasets.images import ImageError, load_image
from udp_datasets.jobs.shard_job import run_shards
from udp_datasets.sources import SourceError
from udp_datasets.formats.codec import png_name as png_member_name
from udp_datasets.formats.webdataset import split_key
from udp_datasets.sources.keys import IMAGE_EXTENSIONS, image_format

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "avif", "heic", "jxl", "txt", "json", "cls", "bin", "dat"]
PAYLOADS = ["png", "jpeg", "avif", "heic", "text", "empty", "corrupt"]
RUN = count()


def _payload(kind: str, seed: int) -> bytes:
    picture = Image.fromarray(hostile.gradient(6, 5, seed=seed))
    return {"png": lambda: hostile.encode(picture), "jpeg": lambda: hostile.encode(picture, "JPEG", quality=95),
            "avif": lambda: hostile.ftyp_image(b"avif"), "heic": lambda: hostile.ftyp_image(b"heic"),
            "text": lambda: f"caption {seed}".encode(), "empty": lambda: b"",
            "corrupt": lambda: hostile.encode(picture)[:30]}[kind]()


members = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(EXTENSIONS),
                             st.sampled_from(PAYLOADS), st.integers(0, 50)), min_size=1, max_size=8)


def _is_image(name: str, data: bytes | None) -> bool:
    ext = name.rsplit(".", 1)[-1].lower()
    return ext in IMAGE_EXTENSIONS or image_format(data) is not None or ext in ("avif", "heic", "jxl")


def _check_protected(png: bytes, source: bytes, budget: int) -> None:
    assert image_format(png) == "PNG"
    out, clean = load_image(png).pixels.astype(int), load_image(source).pixels.astype(int)
    assert out.shape == clean.shape
    linf = int(np.abs(out - clean).max())
    assert 1 <= linf <= budget


@pytest.fixture(scope="module")
def cfg(unlearnable_surrogate):
    return TINY.replace(surrogate=unlearnable_surrogate, steps=2, batch_size=4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=members)
@example(spec=[("a", "jpg", "avif", 0), ("b", "jpg", "avif", 0), ("a", "jpg", "png", 0)])  # a key that repeats
@example(spec=[("a", "jpg", "png", 1), ("a", "jpeg", "png", 2), ("b", "bin", "png", 3), ("c", "heic", "text", 0)])
def test_tar_nothing_unprotected_reaches_the_output(cfg, tmp_path_factory, spec):
    base = tmp_path_factory.mktemp(f"tar{next(RUN)}")
    inputs: list[tuple[str, bytes]] = []
    with tarfile.open(base / "s.tar", "w") as tar:
        for key, ext, kind, seed in spec:
            data = _payload(kind, seed)
            inputs.append((f"{key}.{ext}", data))
            hostile.add_member(tar, f"{key}.{ext}", data)
    run_shards(str(base / "s.tar"), base / "out", cfg, progress=False)
    # the input's samples: runs of consecutive members of one key
    samples: list[list[tuple[str, bytes]]] = []
    for name, data in inputs:
        if samples and split_key(samples[-1][0][0])[0] == split_key(name)[0]:
            samples[-1].append((name, data))
        else:
            samples.append([(name, data)])
    with tarfile.open(base / "out" / "s.tar") as tar:
        out = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    at = 0
    for sample in samples:  # output samples are kept input samples, in order (a key may repeat: match by content)
        if at < len(out) and _kept_as(sample, out[at:at + len(sample)], cfg.budget_levels):
            at += len(sample)
    assert at == len(out), f"output members that are no protected input sample: {out[at:]}"


def _kept_as(sample: list[tuple[str, bytes]], written: list[tuple[str, bytes]], budget: int) -> bool:
    """Whether ``written`` is ``sample`` protected: same members in order, every image a protected PNG
    of its source within the budget under its PNG name, every other member byte-identical and no
    image by name or content, no two members of one name."""
    names = [png_member_name(n) if n.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS else n for n, _ in sample]
    if [n for n, _ in written] != names or len(set(names)) != len(names):
        return False
    try:
        for (name, data), (_, out_data) in zip(sample, written):
            if name.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                _check_protected(out_data, data, budget)
            elif out_data != data or _is_image(name, data):
                return False
    except (AssertionError, ImageError):
        return False
    return True


layouts = st.fixed_dictionaries({
    "image": st.sampled_from(["struct", "binary"]),
    "other": st.sampled_from(["none", "image_struct", "image_feature", "binary_image", "binary_data", "string"]),
    "rows": st.lists(st.tuples(st.sampled_from(["png", "jpeg", "corrupt", "none"]), st.integers(0, 50)),
                     min_size=1, max_size=4),
})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts)
def test_parquet_nothing_unprotected_reaches_the_output(cfg, tmp_path_factory, layout):
    base = tmp_path_factory.mktemp(f"pq{next(RUN)}")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    sources = [None if kind == "none" else _payload(kind, seed) for kind, seed in layout["rows"]]
    ids = [f"r{i}" for i in range(len(sources))]
    columns: dict[str, pa.Array] = {"id": pa.array(ids)}
    if layout["image"] == "struct":
        columns["image"] = pa.array([None if s is None else {"bytes": s, "path": "x.png"} for s in sources], struct)
    else:
        columns["image"] = pa.array(sources, pa.binary())
    other = layout["other"]
    thumbs = [_payload("png", 90 + i) for i in range(len(sources))]
    if other in ("image_struct", "image_feature"):
        columns["thumb"] = pa.array([{"bytes": t, "path": None} for t in thumbs], struct)
    elif other == "binary_image":
        columns["thumb"] = pa.array([t if i % 2 == 0 else b"\x00data" for i, t in enumerate(thumbs)], pa.binary())
    elif other == "binary_data":
        columns["thumb"] = pa.array([b"\x00\x01data"] * len(sources), pa.binary())
    elif other == "string":
        columns["thumb"] = pa.array(["a caption"] * len(sources))
    table = pa.table(columns)
    if other == "image_feature":
        table = table.replace_schema_metadata(hostile.image_features_metadata(
            image={"_type": "Image"}, thumb={"_type": "Image"}))
    (base / "src").mkdir()
    pq.write_table(table, base / "src" / "rows.parquet")
    try:
        run_shards(str(base / "src"), base / "out", cfg, key_column="id", image_column="image", progress=False)
    except SourceError as exc:
        assert other in ("image_struct", "image_feature") and "thumb" in str(exc)
        return
    assert other not in ("image_struct", "image_feature"), "a second image column must be refused"
    kept = pq.read_table(base / "out" / "rows.parquet").to_pylist()
    by_id = dict(zip(ids, sources))
    for row in kept:
        image = row["image"]["bytes"] if layout["image"] == "struct" else row["image"]
        _check_protected(image, by_id[row["id"]], cfg.budget_levels)
        for name, value in row.items():
            if name != "image":
                assert not (isinstance(value, bytes) and image_format(value)), (name, "copied an image unprotected")
    expected = [i for i, s in zip(ids, sources) if s is not None and _decodable(s)
                and not (other == "binary_image" and int(i[1:]) % 2 == 0)]
    assert [r["id"] for r in kept] == expected


def _decodable(data: bytes) -> bool:
    try:
        load_image(data)
    except ImageError:
        return False
    return True


def test_property_helpers_see_every_payload_kind():
    """The strategies above reach every outcome: the payloads decode, or are refused, as meant."""
    kinds = defaultdict(list)
    for kind in PAYLOADS:
        kinds[_decodable(_payload(kind, 1))].append(kind)
    assert sorted(kinds[True]) == ["jpeg", "png"]
    assert image_format(_payload("avif", 1)) == "AVIF" and image_format(_payload("heic", 1)) == "HEIC/HEIF"
    assert io.BytesIO(_payload("text", 1)).read().startswith(b"caption")
