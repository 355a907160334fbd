"""The records floor (``udp_datasets/records``): the tally every job keeps, the output names,
versions from the installed metadata, and the package root that reads its version from there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from udp_datasets.records import names
from udp_datasets.records.summary import Tally
from udp_datasets.records.versions import UNINSTALLED, library_versions, package_version, release


def test_a_tally_adds_images_and_merges_shards_in_any_split():
    """Sums, not means: merging per-shard tallies gives the job's tally whatever the split."""
    images = [(3, 41.5), (0, float("inf")), (8, 33.25), (5, None), (2, 47.0)]
    whole = Tally(count=4, errors=1)
    for linf, psnr in images:
        whole.add(linf, psnr)
    assert (whole.images, whole.max_linf, whole.psnr_count) == (5, 8, 3)
    assert whole.mean_psnr_db == round((41.5 + 33.25 + 47.0) / 3, 3)
    first, second = Tally(count=2), Tally(count=2, errors=1)
    for linf, psnr in images[:2]:
        first.add(linf, psnr)
    for linf, psnr in images[2:]:
        second.add(linf, psnr)
    merged = Tally().merge(Tally.from_marker(first.to_marker())).merge(Tally.from_marker(second.to_marker()))
    assert merged == whole
    assert Tally().mean_psnr_db is None and Tally.from_marker({}) == Tally()  # a marker missing keys counts 0


def test_output_names_agree_with_what_readers_skip():
    """The names live in records.names; the readers below (sources.keys) tell data from records by them."""
    from udp_datasets.sources.keys import NOT_DATA_NAMES, NOT_DATA_SUFFIXES, is_data_file

    assert {names.RECORD_FILE, names.MANIFEST_FILE, names.ERRORS_FILE} <= NOT_DATA_NAMES
    assert {names.MARKER_SUFFIX, names.SHARD_MANIFEST_SUFFIX} <= set(NOT_DATA_SUFFIXES)
    for rel in (names.JOB_RECORD, f"{names.SHARDS_FOLDER}/a.tar{names.MARKER_SUFFIX}", *names.MANIFEST_FILES):
        assert not is_data_file(rel)
    assert names.RECORD_FILES[0] == names.RECORD_FILE and names.JOB_RECORD == ".udp/job.json"


def test_versions_come_from_the_installed_metadata():
    import importlib.metadata

    import udp_datasets

    assert udp_datasets.__version__ == package_version() == importlib.metadata.version("udp-datasets")
    assert package_version("no-such-distribution-udp") == UNINSTALLED
    versions = library_versions()
    assert set(versions) == {"udp_datasets", "torch", "diffusers", "datasets"}
    assert versions["torch"] == importlib.metadata.version("torch")
    assert [release(v) for v in ("0.2.0", "0.3.0rc1", "2.13.0+cpu", UNINSTALLED, "dev", None)] == [
        (0, 2, 0), (0, 3, 0), (2, 13, 0), (0,), None, None]


def test_the_root_is_light_and_udp_datasets_publish_is_the_subpackage():
    """``import udp_datasets`` loads no Hub client; ``udp_datasets.publish`` is the subpackage on
    first access and after (0.2 returned the function first), and the function is ``publish.publish``."""
    code = (
        "import json, sys, types\n"
        "import udp_datasets\n"
        "light = 'huggingface_hub' not in sys.modules and 'udp_datasets.publish' not in sys.modules\n"
        "first = udp_datasets.publish\n"
        "from udp_datasets.publish import publish\n"
        "from udp_datasets.publish.hub import publish as hub_publish\n"
        "print(json.dumps([light, isinstance(first, types.ModuleType), first is udp_datasets.publish,\n"
        "                  first.__name__, publish is hub_publish]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True, True, "udp_datasets.publish", True]


@pytest.mark.parametrize("record,writer", [
    ({"config": {"epsilon": 0.03}, "versions": {"udp_datasets": "0.2.0"}}, "0.2.x"),
    ({"config": {"epsilon": 0.03}, "versions": {"udp_datasets": "0.1.4"}}, "0.1.x"),
    ({"config": {"epsilon": 0.03}}, "udp-datasets < 0.3"),
    ({"config": {"epsilon": 0.03, "config_version": 1}, "versions": {"udp_datasets": "0.2.0"}}, None),
    ({"config": {"epsilon": 0.03}, "versions": {"udp_datasets": "0.3.0"}}, None),
    ({"config": None, "versions": {"udp_datasets": "0.2.0"}}, None),
])
def test_which_records_were_written_before_manifest_digests(record, writer):
    from udp_datasets.publish.integrity import written_before_digests

    assert written_before_digests(record) == writer
