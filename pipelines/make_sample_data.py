"""Write small real sample inputs for the pipelines (photographs shipped with scikit-image).

    python pipelines/make_sample_data.py [OUT]      # default: udp-pipelines/sample_data

OUT/webdataset/shard-00000{0..3}.tar   8 samples each: KEY.jpg, KEY.txt, KEY.json, KEY.cls
OUT/parquet/part-0000{0,1}.parquet     Hugging Face Image column + caption + label
OUT/hf_dataset/                        a save_to_disk dataset (image, caption, label)
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from udp_datasets.sources.bundled import faces_rgb, photo_crops


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def main(out: str = "udp-pipelines/sample_data") -> Path:
    root = Path(out)
    images = photo_crops(48, per_photo=2) + faces_rgb(48, count=16)  # 32 real images
    captions = [f"sample picture {i}" for i in range(len(images))]
    (root / "webdataset").mkdir(parents=True, exist_ok=True)
    for shard in range(4):
        with tarfile.open(root / "webdataset" / f"shard-{shard:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(shard * 8, shard * 8 + 8):
                key = f"{i:08d}"
                _add(tar, f"{key}.jpg", _jpeg(images[i]))
                _add(tar, f"{key}.txt", captions[i].encode())
                _add(tar, f"{key}.json", json.dumps({"index": i, "source": "skimage"}).encode())
                _add(tar, f"{key}.cls", str(i % 2).encode())
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["photo", "face"])})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": _jpeg(a), "path": f"{i:08d}.jpg"} for i, a in enumerate(images)],
         "caption": captions, "label": [0 if i < 16 else 1 for i in range(len(images))]}, features=features)
    (root / "parquet").mkdir(parents=True, exist_ok=True)
    for part in range(2):
        ds.shard(2, part, contiguous=True).to_parquet(str(root / "parquet" / f"part-{part:05d}.parquet"))
    ds.save_to_disk(str(root / "hf_dataset"))
    print(f"sample data written to {root}")
    return root


if __name__ == "__main__":
    main(*sys.argv[1:2])
