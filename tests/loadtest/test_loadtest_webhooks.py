"""``ciotrack loadtest --webhooks URL`` hands the run to the reporting-webhook blaster
(``ciotrack.webhooks.blast``): signed webhooks at a real served handler, which verifies them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciotrack.__main__ import main
from ciotrack.webhooks import Event, WebhookHandler
from recording_webhook_server import serve_recording_handler

SECRET = "loadtest-webhook-secret"


@pytest.fixture
def served_handler() -> Iterator[tuple[str, WebhookHandler, list[Event]]]:
    with serve_recording_handler(SECRET) as served:
        yield served


def test_webhooks_option_runs_the_blaster(served_handler: tuple[str, WebhookHandler, list[Event]],
                                          tmp_path: Path) -> None:
    url, handler, received = served_handler
    report_path = tmp_path / "webhooks.json"
    code = main(["loadtest", "--webhooks", url, "--webhook-secret", SECRET, "--webhook-rate", "100",
                 "--webhook-duration", "0.5", "--webhook-budget-ms", "4000", "--webhook-report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["requests"] == 50 and report["unexpected"] == 0
    assert handler.drain(5)
    assert len(received) == 50  # every webhook verified and handled by the served handler
