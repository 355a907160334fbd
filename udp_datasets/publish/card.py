"""The dataset card of a published protected dataset (``README.md``).

Rendered with ``huggingface_hub.DatasetCard`` / ``DatasetCardData`` so the YAML header is
what the Hub expects:

* ``license`` carried over from the source dataset's card when it is known (or given);
* ``tags``: ``unlearnable-examples``, ``udp-protected``, ``image``;
* ``source_datasets`` (``extended|<hub id>`` when the source is a Hub dataset);
* ``configs`` with explicit ``data_files``, so that ``load_dataset(REPO_ID)`` reads the
  images and never the manifest, and ``dataset_info`` (features, split sizes) for Arrow
  outputs, the way ``push_to_hub`` writes it;
* ``udp_protection``: the source (id, revision), the full config as structured YAML, its
  hash, the budget, the surrogate reference (source, revision, weights SHA-256), counts,
  library versions and the names of the manifest and job record files.

The human part says what the protection is, its budget, how it was made, how to verify
it, the measured efficacy when an evaluation report is given, and its known limits. The
efficacy section is what the report itself carries: its ``card_markdown`` block (written by
``udp-datasets evaluate``), else its verdict / summary / markdown text and its metrics as a
table; the card knows nothing of how an evaluation is run.
Nothing secret goes in: the card is built only from the job record, the manifest and the
arguments, never from the environment (tokens included).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..sources.hf import license_value
from ..records.names import MANIFEST_FILE, RECORD_FILE

logger = logging.getLogger(__name__)

TAGS = ("unlearnable-examples", "udp-protected", "image")
PAPER = "https://arxiv.org/abs/2306.01902"


# ----------------------------------------------------------------------- statistics
def manifest_stats(manifest: Any) -> dict[str, Any]:
    """Count, L-inf and PSNR summary, sizes of a manifest table (for the card)."""
    rows = manifest.to_pydict() if manifest is not None else {}
    linf = [v for v in rows.get("linf", []) if v is not None]
    psnr = [v for v in rows.get("psnr", []) if v is not None and math.isfinite(v)]
    widths, heights = rows.get("width", []), rows.get("height", [])
    return {
        "count": len(rows.get("key", [])),
        "max_linf_levels": max(linf, default=None),
        "min_linf_levels": min(linf, default=None),
        "mean_psnr_db": round(sum(psnr) / len(psnr), 2) if psnr else None,
        "min_psnr_db": round(min(psnr), 2) if psnr else None,
        "sizes": sorted({f"{w}x{h}" for w, h in zip(widths, heights)})[:10],
    }


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
                        (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return name
    return "n>1B"


# ---------------------------------------------------------------------------- card
def render_card(record: dict[str, Any] | None, manifest: Any, *, repo_id: str, layout: str,
                data_files: Sequence[str] | str | dict[str, Any], revision: str | None = None,
                license: str | None = None, pretty_name: str | None = None,
                eval_report: dict[str, Any] | None = None, features: Any = None, split: str = "train",
                num_bytes: int | None = None, extra_files: Sequence[str] = ()):
    """The ``DatasetCard`` for a protected dataset folder about to be published.

    ``data_files`` are the patterns (or paths) of the data inside the repo; ``features``
    (a ``datasets.Features``) adds ``dataset_info`` to the YAML.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    record = record or {}
    stats = manifest_stats(manifest)
    config = record.get("config") or {}
    source = _source_dict(record)
    license = license or license_value(source.get("license"))
    surrogate = record.get("surrogate") or {}
    budget = record.get("budget_levels") or _levels(config.get("epsilon"))
    name = pretty_name or f"{repo_id.split('/')[-1]} (UDP-protected)"

    protection = {
        "method": "UDP/EUDP unlearnable diffusion perturbation (udp-datasets)",
        "source": {"id": source.get("id"), "revision": source.get("revision")},
        "budget_levels": budget,
        "config_hash": record.get("config_hash"),
        "config": config,
        "surrogate": {k: surrogate.get(k) for k in ("kind", "source", "revision", "sha256", "architecture")},
        "count": stats["count"],
        "quarantined": record.get("errors"),
        "max_linf_levels": stats["max_linf_levels"],
        "mean_psnr_db": stats["mean_psnr_db"],
        "manifest": MANIFEST_FILE,
        "manifest_sha256": record.get("manifest_sha256"),
        "record": [f for f in extra_files if f.endswith(".json")] or [RECORD_FILE],
        "versions": record.get("versions") or {},
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }
    if record.get("shards_failed"):  # published with --allow-failed-shards: say what is missing
        protection["shards_missing"] = [{"shard": f.get("shard"), "reason": f.get("reason")}
                                        for f in record["shards_failed"]]
    card_data = DatasetCardData(
        license=license, pretty_name=name, tags=list(TAGS),
        size_categories=[size_category(stats["count"])],
        source_datasets=[f"extended|{source['id']}"] if source.get("type") == "hub" and source.get("id") else None,
        udp_protection=_yaml_safe(protection),
    )
    _add_configs(card_data, data_files, split)
    if features is not None:
        _add_dataset_info(card_data, features, split, stats["count"], num_bytes)
    body = _body(record, stats, protection, repo_id=repo_id, layout=layout, revision=revision, license=license,
                 source=source, eval_report=eval_report, name=name)
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _add_configs(card_data: Any, data_files: Any, split: str) -> None:
    from datasets.utils.metadata import MetadataConfigs

    if isinstance(data_files, dict):
        entry = data_files
    else:
        paths = [data_files] if isinstance(data_files, str) else list(data_files)
        entry = {"data_files": [{"split": split, "path": paths[0] if len(paths) == 1 else paths}]}
    MetadataConfigs({"default": entry}).to_dataset_card_data(card_data)


def _add_dataset_info(card_data: Any, features: Any, split: str, count: int, num_bytes: int | None) -> None:
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo

    splits = SplitDict()
    splits.add(SplitInfo(name=split, num_bytes=num_bytes or 0, num_examples=count))
    info = DatasetInfo(features=features, splits=splits, dataset_size=num_bytes or 0, config_name="default")
    try:
        DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    except Exception as exc:  # a datasets release with another card format: the configs suffice
        logger.debug("dataset_info not written into the card: %s", exc)


def _body(record: dict, stats: dict, protection: dict, *, repo_id: str, layout: str, revision: str | None,
          license: Any, source: dict, eval_report: dict | None, name: str) -> str:
    target = repo_id + (f"@{revision}" if revision and revision != "main" else "")
    lines = [
        f"# {name}",
        "",
        "Every image in this dataset carries an invisible, bounded perturbation made with "
        f"`udp-datasets` (*Unlearnable Diffusion Perturbation*, UDP / EUDP, "
        f"[arXiv 2306.01902]({PAPER})). It is meant to make diffusion models trained or fine-tuned "
        "on these images learn them poorly, while people see the same pictures.",
        "",
        *_missing(protection.get("shards_missing") or []),
        "## What the protection is",
        "",
        *_what_it_is(record.get("config") or {}, stats, protection["budget_levels"]),
        "",
        "## How it was made",
        "",
        *_how_it_was_made(record, protection, source, license, stats),
        "",
        "## How to verify",
        "",
        *_how_to_verify(target),
        "",
        "## Loading",
        "",
        *_loading(repo_id, layout, revision),
        "",
        "## Measured efficacy",
        "",
        *_efficacy(eval_report),
        "",
        "## Known limits",
        "",
        *KNOWN_LIMITS,
        "",
    ]
    return "\n".join(lines)


def _missing(failed: list[dict]) -> list[str]:
    """The section of a dataset published without the shards its job could not protect."""
    if not failed:
        return []
    return ["## Missing data", "",
            f"**This dataset is incomplete.** {len(failed)} input shard(s) failed to be protected and are "
            "not in it (none of their samples was published):", "",
            *[f"- `{f.get('shard')}`: {f.get('reason')}" for f in failed], ""]


def _what_it_is(config: dict, stats: dict, budget: int | None) -> list[str]:
    eps = config.get("epsilon")
    return [
        f"- Each image x was published as x + δ with ‖δ‖∞ ≤ **{budget} grey levels out of 255**"
        + (f" (ε = {eps:.5f})" if isinstance(eps, (int, float)) else "")
        + "; the bound was checked on the final 8-bit pixels of every image.",
        f"- Measured over the {stats['count']} published images: max L-inf "
        f"{_fmt(stats['max_linf_levels'])} levels, mean PSNR {_fmt(stats['mean_psnr_db'])} dB "
        f"(lowest {_fmt(stats['min_psnr_db'])} dB).",
        "- Images are lossless PNG at their original resolution; other columns are unchanged.",
    ]


def _how_it_was_made(record: dict, protection: dict, source: dict, license: Any, stats: dict) -> list[str]:
    config = record.get("config") or {}
    surrogate = protection["surrogate"]
    versions = protection["versions"]
    return [
        f"- Source: {_display(source.get('id'))}"
        + (f" at revision `{source['revision']}`" if source.get("revision") else "")
        + (f" (license `{license}`)" if license else " (license unknown: the source's terms apply)") + ".",
        f"- Objective `{config.get('objective')}`, timesteps `{config.get('timesteps')}`"
        f" (γ = {config.get('gamma')}), {config.get('steps')} PGD steps; config hash "
        f"`{record.get('protection_config_hash') or protection['config_hash']}` (the full config is in the "
        "YAML header and in "
        f"`{protection['record'][0]}`).",
        f"- Surrogate ({surrogate.get('kind') or 'pixel'}-space"
        + (f", {surrogate['architecture']}" if surrogate.get("architecture") else "") + "): "
        + _display(surrogate.get('source'))
        + (f" revision `{surrogate['revision']}`" if surrogate.get("revision") else "")
        + f", weights SHA-256 `{surrogate.get('sha256')}`"
        + (f"; text condition `{config['prompt']}`" if config.get("prompt") else "")
        + (f"; encoder term weight {config.get('encoder_weight')} ({config.get('encoder_target')})"
           if config.get("encoder_weight") or config.get("objective") == "encoder" else "") + ".",
        f"- {stats['count']} images protected"
        + (f", {protection['quarantined']} quarantined (undecodable or unprotectable, left out)"
           if protection.get("quarantined") else "")
        + (f"; run {protection['started_at']} to {protection['finished_at']}" if protection.get("started_at") else "")
        + ".",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "." if versions else
        "- Versions: not recorded.",
    ]


def _how_to_verify(target: str) -> list[str]:
    return [
        "`manifest.parquet` has one row per image: sample `key`, `source` file or shard, SHA-256 of the "
        "source bytes (`source_sha256`) and of the published PNG (`sha256`), `width`, `height`, "
        "`linf` (grey levels), `psnr` and `config_hash`. To re-hash every published image against it:",
        "",
        "```bash",
        "pip install udp-datasets",
        f"udp-datasets verify {target}                    # hashes, budget and manifest",
        f"udp-datasets verify {target} --source SOURCE    # also L-inf against the clean source",
        "```",
        "",
        "It reports every sample that is missing, extra, altered after protection, over budget, or "
        "identical to its source, and exits non-zero if there is any. It also recomputes the "
        "manifest's SHA-256 (`udp_protection.manifest_sha256` above and in the job record): this shows "
        "accidental or casual edits of the manifest, not a forgery that rewrites manifest and record together.",
    ]


KNOWN_LIMITS = (
    "- **Do not re-encode as JPEG** (or resize, crop or blur): any lossy processing changes the "
    "perturbation and can remove the protection; keep the PNG bytes as published.",
    "- The protection was optimised against a surrogate model; other architectures, longer "
    "training, purification (e.g. diffusion-based denoising) or adaptive fine-tuning may learn "
    "the images anyway. It is a deterrent, not a guarantee.",
    "- Metadata other than the ICC profile (EXIF, text chunks) was not carried over; EXIF "
    "orientation was applied to the pixels. Alpha channels are unchanged.",
    "- The source dataset's license and terms still apply to this derivative.",
)


def _loading(repo_id: str, layout: str, revision: str | None) -> list[str]:
    rev = f", revision={revision!r}" if revision and revision != "main" else ""
    lines = ["```python", "from datasets import load_dataset", "",
             f"ds = load_dataset({repo_id!r}{rev}, split=\"train\")  # or streaming=True", "```"]
    if layout == "webdataset":
        ref = revision or "main"
        lines += ["", "The tar shards also stream with `webdataset`:", "", "```python",
                  "import webdataset as wds",
                  f"url = \"https://huggingface.co/datasets/{repo_id}/resolve/{ref}/SHARD.tar\"",
                  "ds = wds.WebDataset(url, shardshuffle=False).decode(\"pil\")", "```"]
    return lines


def _efficacy(report: dict[str, Any] | None) -> list[str]:
    """The evaluation report's own card section (``card_markdown``, written by ``udp-datasets
    evaluate``) when it carries one, else its verdict / summary / markdown and its scalars."""
    if not report:
        return ["Not measured for this release: no evaluation report was attached. Until one is, do "
                "not rely on the protection (see `udp-datasets evaluate`)."]
    if isinstance(report.get("card_markdown"), str) and report["card_markdown"].strip():
        return [report["card_markdown"].strip()]
    lines: list[str] = []
    for key in ("verdict", "summary", "conclusion"):
        if isinstance(report.get(key), str):
            lines += [report[key].strip(), ""]
            break
    if isinstance(report.get("markdown"), str):
        lines += [report["markdown"].strip(), ""]
    scalars = {k: v for k, v in _flatten(report).items()
               if isinstance(v, (int, float, str, bool)) and k not in TEXT_KEYS}
    if scalars:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in list(scalars.items())[:40]]
    return lines or ["An evaluation report was attached but holds no readable metrics."]


TEXT_KEYS = ("verdict", "summary", "conclusion", "markdown", "card_markdown")  # shown as text, not as metrics


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _source_dict(record: dict[str, Any]) -> dict[str, Any]:
    info = record.get("source_info")
    if isinstance(info, dict):
        return info
    src = record.get("source")
    if isinstance(src, dict):
        return src
    return {"id": src, "type": None, "revision": None, "license": None}


def _display(ref: Any) -> str:
    """A Hub id as is; a local path by its folder name only (the full path stays in the YAML)."""
    if not isinstance(ref, str) or not ref:
        return "not recorded"
    if os.path.isabs(ref) or ref.startswith((".", "~")) or "\\" in ref:
        return f"local folder `{Path(ref).name}`"
    return f"`{ref}`"


def _levels(eps: Any) -> int | None:
    return int(round(float(eps) * 255)) if isinstance(eps, (int, float)) else None


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _yaml_safe(obj: Any) -> Any:
    """Plain JSON types only (tuples, paths, numpy scalars become lists / str / numbers)."""
    return json.loads(json.dumps(obj, default=str))


def load_eval_report(path: str | os.PathLike) -> dict[str, Any]:
    """An evaluation report for the card: a JSON file, or a Markdown file (shown as is)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".md", ".markdown"):
        return {"markdown": text}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
