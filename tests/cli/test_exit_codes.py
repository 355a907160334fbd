"""The one error-to-exit-code table (cli/exit_codes.py) for the Hub side too: publish and verify read
their statuses from it instead of mapping errors themselves."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import HfHubHTTPError

from udp_datasets.cli.exit_codes import EXIT_FAILED, EXIT_USAGE, error_exit_code
from udp_datasets.publish.hub import PublishError, PublishIncomplete, PublishRefused
from udp_datasets.publish.verify import VerifyError


def _hub_error(status: int) -> HfHubHTTPError:
    import importlib

    from huggingface_hub import errors

    # the response type is that of huggingface_hub's HTTP client, whichever it uses (httpx2 in 2.x)
    client = importlib.import_module(errors.Response.__module__.split(".")[0])
    request = client.Request("GET", "http://hub.invalid/api/datasets/someone/repo")
    return HfHubHTTPError(f"HTTP {status}", response=client.Response(status, request=request))


@pytest.mark.parametrize("exc, code", [
    (PublishError("no protected images"), EXIT_USAGE),
    (VerifyError("not a protected folder"), EXIT_USAGE),
    (PublishIncomplete("2 shards failed"), EXIT_FAILED),
    (PublishRefused.__new__(PublishRefused), EXIT_FAILED),
    (_hub_error(404), EXIT_USAGE), (_hub_error(401), EXIT_USAGE), (_hub_error(403), EXIT_USAGE),
    (_hub_error(500), EXIT_FAILED),
    (RuntimeError("a bug"), None),
])
def test_publish_and_hub_errors_map_through_the_one_table(exc, code):
    assert error_exit_code(exc) == code


def test_publish_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    from udp_datasets.cli.app import main

    assert main(["publish", str(tmp_path / "missing"), "someone/repo"]) == EXIT_USAGE
    assert "udp-datasets publish: error:" in capsys.readouterr().err
