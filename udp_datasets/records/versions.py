"""Versions from the installed distributions' metadata (``importlib.metadata``), read in one place.

Why metadata and not each library's ``__version__``: it needs no import of torch or diffusers,
and the package's own version has one source, ``pyproject.toml`` (the package root's
``__version__`` is read from here, so nothing inside the package imports the root).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "udp-datasets"
UNINSTALLED = "0+unknown"
"""The version of a source tree used without being installed (``PYTHONPATH=.`` on a checkout):
there is no metadata to read, and a made-up release number would be wrong in every record.
``pip install -e .`` gives a checkout its metadata (re-run it after ``pyproject.toml``'s version changes)."""
RECORDED = {"udp_datasets": DISTRIBUTION, "torch": "torch", "diffusers": "diffusers", "datasets": "datasets"}
"""The versions that decide a job's output bytes: the key in records, the distribution it is read from."""
_RELEASE = re.compile(r"^(\d+(?:\.\d+)*)")  # the numeric release at the start of a version


def package_version(distribution: str = DISTRIBUTION) -> str:
    """A distribution's installed version; :data:`UNINSTALLED` when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNINSTALLED


def library_versions() -> dict[str, str]:
    """The versions that decide a job's output bytes, recorded with every job and report."""
    return {key: package_version(dist) for key, dist in RECORDED.items()}


def release(text: str | None) -> tuple[int, ...] | None:
    """``"0.2.0"`` -> ``(0, 2, 0)``: the numeric release at the start of a recorded version (``0.3.0rc1``
    -> ``(0, 3, 0)``); None when there is none to read."""
    match = _RELEASE.match(text) if isinstance(text, str) else None
    return tuple(int(n) for n in match.group(1).split(".")) if match else None
