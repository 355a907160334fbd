"""The shard job: markers, resume, SIGKILL safety, config hashes, fitting once, two
processes through accelerate, and the ready-made pipelines."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udp_datasets import ProtectionConfig
from udp_datasets.config import ConfigError
from udp_datasets.cli.app import EXIT_QUARANTINED, EXIT_USAGE, main
from udp_datasets.cli.launch import launch_command, strip_option
from udp_datasets.cli.pipelines import run_pipeline
from udp_datasets.jobs.shard_job import ConfigMismatchError, run_shards
from udp_datasets.records.names import BOOKKEEPING
from udp_datasets.sinks.atomic import OutputExistsError

REPO = next(p for p in Path(__file__).resolve().parents if (p / "layout.toml").is_file())
FLAGS = ["--resolution", "16", "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_shards(root: Path, images: list[np.ndarray], shards: int, per_shard: int, corrupt: str | None = None):
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(shards):
        with tarfile.open(root / f"part-{s:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(per_shard):
                key = f"{s:02d}{i:04d}"
                data = _jpeg(images[k % len(images)])
                if key == corrupt:
                    data = data[: len(data) // 3]
                for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", f"caption {k}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(payload), 1_650_000_000
                    tar.addfile(info, io.BytesIO(payload))
                k += 1
    return sorted(root.glob("*.tar"))


def _outputs(dst: Path) -> dict[str, bytes]:
    """Every file a run leaves, by relative path, except run-specific timings and logs."""
    out = {}
    for path in sorted(dst.rglob("*")):
        rel = path.relative_to(dst).as_posix()
        if path.is_file() and not rel.endswith(".json"):
            out[rel] = path.read_bytes()
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "udp_datasets.cli", "protect", *args]


@pytest.fixture(scope="module")
def job(tmp_path_factory, photos32, unlearnable_surrogate):
    """4 shards x 6 samples (one corrupt) and an uninterrupted single-process CLI run of them."""
    root = tmp_path_factory.mktemp("shard_job")
    shards = _write_shards(root / "src", photos32, shards=4, per_shard=6, corrupt="020003")
    argv = [str(root / "src" / "part-{000000..000003}.tar"), "DST", "--surrogate", unlearnable_surrogate,
            "--steps", "40", *FLAGS]
    ref = root / "reference"
    proc = subprocess.run(_cli(*[str(ref) if a == "DST" else a for a in argv]), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == EXIT_QUARANTINED, proc.stderr[-3000:]
    return {"root": root, "shards": shards, "argv": argv, "reference": ref}


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(job):
    dst = job["root"] / "killed"
    argv = [str(dst) if a == "DST" else a for a in job["argv"]]
    proc = subprocess.Popen(_cli(*argv), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = dst / BOOKKEEPING / "shards"
    deadline = time.monotonic() + 300
    while not list(markers.glob("*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in markers.glob("*.done.json"))
    assert 1 <= len(done) < 4, "the run must be killed part-way"
    reference = _outputs(job["reference"])
    for rel, data in _outputs(dst).items():  # nothing partial ever sits under a final name
        if not any(part.startswith(".") for part in Path(rel).parts):
            assert data == reference[rel], rel

    resumed = subprocess.run(_cli(*argv), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == EXIT_QUARANTINED, resumed.stderr[-3000:]
    assert f"{4 - len(done)} done now, {len(done)} already complete" in resumed.stdout
    assert _outputs(dst) == reference  # shards, manifests, errors: byte for byte
    assert not [p for p in dst.rglob("*") if ".tmp-" in p.name]
    summary = json.loads((dst / BOOKKEEPING / "job.json").read_text())
    assert summary["count"] == 23 and summary["errors"] == 1 and summary["shards"] == 4


@pytest.mark.slow
def test_two_processes_cover_every_shard_exactly_once(job):
    dst = job["root"] / "two"
    argv = [str(dst) if a == "DST" else a for a in job["argv"]]
    proc = subprocess.run(_cli(*argv, "--num-processes", "2"), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == EXIT_QUARANTINED, proc.stderr[-3000:]
    summary = json.loads((dst / BOOKKEEPING / "job.json").read_text())
    assert summary["world_size"] == 2 and len(summary["ranks"]) == 2
    per_rank = [set(r["shards"]) for r in summary["ranks"]]
    assert all(per_rank) and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == {p.name for p in job["shards"]}
    for name in per_rank[1]:
        marker = json.loads((dst / BOOKKEEPING / "shards" / f"{name}.done.json").read_text())
        assert marker["rank"] == 1 and marker["world_size"] == 2
    assert _outputs(dst) == _outputs(job["reference"])  # which rank ran a shard does not matter


def test_resume_skips_complete_shards_and_redoes_damaged_ones(tmp_path, photos32, tiny_config):
    cfg = tiny_config.replace(steps=2, batch_size=4)
    _write_shards(tmp_path / "src", photos32, shards=3, per_shard=3)
    first = run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    assert (first.shards_done, first.shards_skipped, first.count) == (3, 0, 9)
    before = _outputs(tmp_path / "out")
    (tmp_path / "out" / "part-000001.tar").unlink()  # output lost
    (tmp_path / "out" / BOOKKEEPING / "shards" / "part-000002.tar.done.json").unlink()  # marker lost
    (tmp_path / "out" / ".part-000000.tar.tmp-123-abc").write_bytes(b"left by a killed run")
    again = run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    assert (again.shards_done, again.shards_skipped, again.count) == (2, 1, 9)
    assert _outputs(tmp_path / "out") == before
    assert again.config_hash == first.config_hash


def test_config_hash_mismatch_refuses_unless_overwrite(tmp_path, photos32, tiny_config, capsys):
    cfg = tiny_config.replace(steps=2, batch_size=4)
    _write_shards(tmp_path / "src", photos32, shards=2, per_shard=2)
    first = run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    other = cfg.replace(epsilon=4 / 255)
    with pytest.raises(ConfigMismatchError, match="another config"):
        run_shards(str(tmp_path / "src"), tmp_path / "out", other, progress=False)
    code = main(["protect", str(tmp_path / "src"), str(tmp_path / "out"), "--surrogate", cfg.surrogate,
                 "--epsilon", "4/255", "--steps", "2", *FLAGS])
    assert code == EXIT_USAGE and "another config" in capsys.readouterr().err
    # the runtime batch size is not part of the identity: a re-run with another one resumes
    assert run_shards(str(tmp_path / "src"), tmp_path / "out", cfg.replace(batch_size=3),
                      progress=False).shards_skipped == 2
    redone = run_shards(str(tmp_path / "src"), tmp_path / "out", other, overwrite=True, progress=False)
    assert redone.shards_done == 2 and redone.config_hash != first.config_hash and redone.max_linf_levels <= 4
    # a folder that is not a shard job output is not written into
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not the output of a shard job"):
        run_shards(str(tmp_path / "src"), tmp_path / "foreign", cfg, progress=False)
    with pytest.raises(OutputExistsError, match="its own input"):
        run_shards(str(tmp_path / "src"), tmp_path / "src", cfg, progress=False, overwrite=True)


def test_surrogate_is_fitted_once_and_reused(tmp_path, photos32):
    cfg = ProtectionConfig(resolution=16, fit_rounds=1, fit_surrogate_steps=2, fit_pgd_steps=1, fit_batch_size=4,
                           fit_max_samples=3, steps=2, batch_size=4)
    _write_shards(tmp_path / "src", photos32, shards=2, per_shard=2)
    first = run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    fitted = tmp_path / "out" / BOOKKEEPING / "surrogate"
    info = json.loads((fitted / "udp_fit.json").read_text())
    assert info["fit"]["num_samples"] == 3 and first.fit["num_samples"] == 3  # bounded by fit_max_samples
    assert first.config["surrogate"] == str(fitted.resolve())
    stamp = (fitted / "udp_fit.json").stat().st_mtime_ns
    again = run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    assert again.shards_skipped == 2 and again.config_hash == first.config_hash
    assert (fitted / "udp_fit.json").stat().st_mtime_ns == stamp  # not refitted
    with pytest.raises(ConfigMismatchError, match="fitted with another config"):
        run_shards(str(tmp_path / "src"), tmp_path / "out", cfg.replace(fit_rounds=2), progress=False)


def test_pipelines_on_tiny_data(tmp_path, unlearnable_surrogate, capsys):
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(REPO / "pipelines"))
    data = make_sample_data.main(str(tmp_path / "sample"))
    common = [f"protection.surrogate={unlearnable_surrogate}", "protection.steps=2", "protection.resolution=16",
              "protection.batch_size=8"]
    runs = {
        "webdataset": [f"source={data}/webdataset/shard-{{000000..000003}}.tar"],
        "parquet": [f"source={data}/parquet"],
        "hf_dataset": [f"source={data}/hf_dataset", "rows_per_shard=16"],
    }
    for kind, sets in runs.items():
        argv = ["--config", str(REPO / "pipelines" / f"{kind}.yaml"), "--set", f"destination={tmp_path / kind}"]
        for item in sets + common:
            argv += ["--set", item]
        assert run_pipeline(kind, argv) == 0, capsys.readouterr()
        summary = json.loads((tmp_path / kind / BOOKKEEPING / "job.json").read_text())
        assert summary["count"] == 32 and summary["errors"] == 0, kind
    assert sorted(p.name for p in (tmp_path / "webdataset").glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "parquet").glob("*.parquet")) == ["part-00000.parquet",
                                                                                 "part-00001.parquet"]
    import datasets

    back = datasets.load_dataset(str(tmp_path / "hf_dataset"), split="train")
    assert len(back) == 32 and back.features["label"].names == ["photo", "face"]
    # streaming: one unit per stream shard, same protected rows
    argv = ["--config", str(REPO / "pipelines" / "hf_dataset.yaml"), "--set", f"destination={tmp_path / 'stream'}",
            "--set", f"source={data}/hf_dataset", "--set", "streaming=true"]
    for item in common:
        argv += ["--set", item]
    assert run_pipeline("hf_dataset", argv) == 0
    assert json.loads((tmp_path / "stream" / BOOKKEEPING / "job.json").read_text())["count"] == 32
    # a wrong kind of shard is a clear usage error
    argv = ["--config", str(REPO / "pipelines" / "webdataset.yaml"), "--set", f"source={data}/parquet"]
    assert run_pipeline("webdataset", argv) == EXIT_USAGE
    assert "takes tar shards" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_script_under_accelerate_launch_two_processes(tmp_path, photos32, unlearnable_surrogate):
    _write_shards(tmp_path / "src", photos32, shards=3, per_shard=2)
    cmd = launch_command([], 2)[:-2] + [
        str(REPO / "pipelines" / "webdataset.py"), "--config", str(REPO / "pipelines" / "webdataset.yaml"),
        "--set", f"source={tmp_path / 'src'}", "--set", f"destination={tmp_path / 'out'}",
        "--set", f"protection.surrogate={unlearnable_surrogate}", "--set", "protection.steps=2",
        "--set", "protection.resolution=16"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / BOOKKEEPING / "job.json").read_text())
    assert summary["world_size"] == 2 and summary["count"] == 6 and summary["shards"] == 3


def test_launch_command_and_option_stripping():
    cmd = launch_command(["protect", "a", "b"], 2, port=29999)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-5:] == ["-m", "udp_datasets.cli", "protect", "a", "b"]
    assert "--multi_gpu" not in launch_command(["x"], 1)
    assert strip_option(["a", "--num-processes", "2", "b", "--num-processes=3"], "--num-processes") == ["a", "b"]


def test_cli_image_folder_to_parquet_shards(tmp_path, photos32, unlearnable_surrogate, capsys):
    """An image folder (a ``datasets`` source) through the shard job: Parquet shards, labels kept."""
    import datasets

    root = tmp_path / "pictures"
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
    for i, arr in enumerate(photos32[:5]):
        Image.fromarray(arr).save(root / ("cats" if i < 3 else "dogs") / f"p{i}.jpg", quality=95)
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    dst = tmp_path / "out"
    code = main(["protect", str(root), str(dst), "--format", "parquet", "--rows-per-shard", "4",
                 "--surrogate", unlearnable_surrogate, "--steps", "2", *FLAGS])
    assert code == EXIT_QUARANTINED and "quarantined 1" in capsys.readouterr().out
    back = datasets.load_dataset(str(dst), split="train")
    assert len(back) == 5 and back.features["label"].names == ["cats", "dogs"]
    paths = [v["path"] for v in back.cast_column("image", datasets.Image(decode=False))["image"]]
    assert sorted(paths) == ["p0.png", "p1.png", "p2.png", "p3.png", "p4.png"]  # no local paths leak
    error = json.loads((dst / BOOKKEEPING / "errors.jsonl").read_text())
    assert error["shard"] == "data/train-00001-of-00002.parquet" and error["row"] == 0  # row within the shard


def test_one_summary_type_and_one_exit_code_mapping():
    from udp_datasets.cli.exit_codes import EXIT_FAILED, EXIT_OK, exit_code
    from udp_datasets.records.summary import JobSummary, format_summary

    base = dict(source="s", destination="d", count=3, errors=1, seconds=1.0, images_per_second=3.0,
                max_linf_levels=2, budget_levels=8, mean_psnr_db=40.0, config={}, config_hash="h", surrogate=None)
    rows = JobSummary(**base)
    shards = JobSummary(**base, images=4, shards=2, shards_done=2, shards_skipped=0, world_size=1,
                        record_file="d/.udp/job.json")
    assert not rows.sharded and shards.sharded
    assert format_summary(rows).startswith("protected   3 images -> d")
    assert "in 2 shards" in format_summary(shards) and "summary     d/.udp/job.json" in format_summary(shards)
    assert JobSummary.from_dict({**shards.to_dict(), "added_later": 1}) == shards  # newer keys are ignored
    for summary in (rows, shards):
        assert exit_code(summary, allow_errors=False) == EXIT_QUARANTINED
        assert exit_code(summary, allow_errors=True) == EXIT_OK
        assert exit_code(summary, allow_errors=False, report_quarantine=False) == EXIT_OK
    failed = JobSummary(**base, shards=2, shards_failed=[{"shard": "a.tar", "reason": "unreadable"}])
    assert exit_code(failed, allow_errors=True) == EXIT_FAILED


def test_the_cli_a_pipeline_and_python_build_one_spec(tmp_path, monkeypatch, unlearnable_surrogate):
    """``protect`` flags and a pipeline's YAML that say the same give the same ShardJobSpec, whose
    defaults are the ones ``run_shards`` gets: the defaults live in the spec only."""
    import udp_datasets.cli.launch as launch
    from udp_datasets.jobs.shard_spec import DEFAULT_ROWS_PER_SHARD, ShardJobSpec

    class Captured(Exception):
        pass

    specs: list[ShardJobSpec] = []

    def capture(spec, state=None):
        specs.append(spec)
        raise Captured

    monkeypatch.setattr(launch, "run_shard_job", capture)
    src = tmp_path / "a.tar"
    with tarfile.open(src, "w"):
        pass
    with pytest.raises(Captured):
        main(["protect", str(src), str(tmp_path / "out"), "--surrogate", str(unlearnable_surrogate)])
    settings = tmp_path / "p.yaml"
    settings.write_text(f"source: {src}\ndestination: {tmp_path / 'out'}\n", encoding="utf-8")
    with pytest.raises(Captured):
        run_pipeline("webdataset", ["--config", str(settings)])
    cli, pipeline = specs
    python = ShardJobSpec(str(src), str(tmp_path / "out"), cli.config)
    for spec in (cli, pipeline):
        assert dataclasses.replace(spec, config=cli.config, source=str(src), destination=str(tmp_path / "out"),
                                   image_root=None, progress=True) == python
    assert python.rows_per_shard == DEFAULT_ROWS_PER_SHARD and python.drop_columns == ()
    assert ShardJobSpec.create(src, "d", cli.config, rows_per_shard=None, image_extensions=None) == \
        ShardJobSpec(src, "d", cli.config)
    with pytest.raises(ConfigError, match="rows_per_shard"):
        ShardJobSpec(src, "d", cli.config, rows_per_shard=0)
    with pytest.raises(ConfigError, match="caption_column"):
        ShardJobSpec(src, "d", cli.config.replace(caption_column="text"))


def test_errors_map_to_exit_codes_in_one_place(capsys):
    """Every entry point (``udp-datasets``, the pipelines) reports an error through one function."""
    from udp_datasets.cli.exit_codes import EXIT_FAILED, error_exit_code, run_reporting_errors
    from udp_datasets.sinks.atomic import OutputWriteError
    from udp_datasets.sources.errors import SourceError
    from udp_datasets.sources.shards import ShardReadError

    def fail(exc: BaseException):
        def work() -> int:
            raise exc
        return work

    assert run_reporting_errors("x pipeline", fail(SourceError("no such source"))) == EXIT_USAGE
    assert capsys.readouterr().err == "x pipeline: error: no such source\n"
    assert error_exit_code(ShardReadError("bad")) == EXIT_USAGE and error_exit_code(OutputWriteError("full")) == EXIT_FAILED
    with pytest.raises(KeyError):  # not a usage error: a bug, raised with its traceback
        run_reporting_errors("x", fail(KeyError("k")))
