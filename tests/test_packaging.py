"""The package's metadata builds on the setuptools to come: the license as an SPDX expression (PEP 639) with its
file. The TOML-table form (``license = {text = ...}``) is deprecated and stops building after 2027-02-18, which
would break the README's install command on a fresh machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package supports 3.10, whose tests skip this file

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_is_an_spdx_expression_with_its_file_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert isinstance(meta["license"], str) and meta["license"] == "Apache-2.0"
    for name in meta["license-files"]:
        assert "Apache License" in (ROOT / name).read_text()[:200]
    # PEP 639 metadata needs setuptools 77 or later at build time
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", setuptools).group(1).split(".")) >= (77,)
