"""An optional keyed signature of a job record: ``--sign-key FILE`` (HMAC-SHA256, stdlib ``hmac``).

The manifest digest (``manifest_sha256``, :func:`~udp_datasets.records.manifest.manifest_digest`)
shows accidental and casual edits, but whoever rewrites the manifest can rewrite the record's
digest too. A signature made with a secret key closes that: ``protect --sign-key FILE`` adds
``manifest_signature`` to the record, an HMAC-SHA256 under the key file's bytes of the fields a
forger would have to change (the manifest digest, the config hash, the budget, the source);
``verify --sign-key FILE`` recomputes it and fails on a mismatch or a missing signature.

It is a *shared-secret* signature: whoever verifies holds the key, and could sign too. It proves
the record comes from someone with the key, not from one person; keep the key out of the data
(and out of the repository you publish to).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError

SIGNED_FIELDS = ("manifest_sha256", "config_hash", "budget_levels", "source", "count")
SCHEME = "hmac-sha256"


class SignKeyError(ConfigError):
    """The key file cannot be used (missing, unreadable, empty)."""


def read_key(path: str | os.PathLike) -> bytes:
    """The key file's bytes; :class:`SignKeyError` names the file when it cannot be used."""
    try:
        key = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SignKeyError(f"--sign-key {path}: cannot read the key file ({exc.strerror or exc})") from exc
    if len(key.strip()) < 16:
        raise SignKeyError(f"--sign-key {path}: the key file holds {len(key.strip())} bytes; use at least 16 "
                           "random bytes (e.g. `head -c 32 /dev/urandom > key`)")
    return key


def signature(record: dict[str, Any], key: bytes) -> str:
    """``hmac-sha256:HEX`` of the record's :data:`SIGNED_FIELDS`, canonical JSON."""
    payload = json.dumps({k: record.get(k) for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":"))
    return f"{SCHEME}:" + hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def sign_record(path: str | os.PathLike, key: bytes) -> str:
    """Add ``manifest_signature`` to the job record at ``path`` (rewritten atomically)."""
    from ..sinks.atomic import write_json_atomic

    record = json.loads(Path(path).read_text(encoding="utf-8"))
    record["manifest_signature"] = signature(record, key)
    write_json_atomic(Path(path), record)
    return record["manifest_signature"]


def signature_problem(record: dict[str, Any] | None, key: bytes | None) -> str | None:
    """Why a record's signature does not hold under ``key`` (None: it holds, or no key given)."""
    if key is None or record is None:
        return None
    found = record.get("manifest_signature")
    if not found:
        return f"the job record {record.get('_file')} is not signed (no manifest_signature) but --sign-key was given"
    if not hmac.compare_digest(str(found), signature(record, key)):
        return (f"the job record {record.get('_file')}'s signature does not match under this key: the record or "
                "the manifest was changed after signing, or it was signed with another key")
    return None
