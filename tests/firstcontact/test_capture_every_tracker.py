"""Under the ``ciotrack_capture`` fixture, ``capture_all()`` or ``CIOTRACK_CAPTURE=1``, a Tracker the
code under test constructs itself records instead of sending: a recording server sees no request,
and the test reads what each tracker captured. A pytest run of such a test (a real subprocess) ends
without waiting for any delivery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ciotrack
from ciotrack.testing import CaptureFixture, capture_all
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, RecordingServer

PYTHON_DIR = str(Path(ciotrack.__file__).resolve().parent.parent)


class SignupApp:
    """An app that owns its tracker, as many do (built in an app factory)."""

    def __init__(self, endpoint: str) -> None:
        self.tracker = Tracker(SITE_ID, API_KEY, endpoint=endpoint)

    def signup(self, user_id: str) -> None:
        self.tracker.identify(user_id, plan="free")
        self.tracker.track(user_id, "signed_up", {"source": "test"})


def test_an_app_tracker_sends_nothing_under_the_fixture(ciotrack_capture: CaptureFixture,
                                                        recorder: RecordingServer) -> None:
    app = SignupApp(recorder.url)
    app.signup("42")
    ciotrack.track("42", "through_the_default")
    [event] = ciotrack_capture.of(app.tracker).events(name="signed_up")
    assert event["identifiers"] == {"id": "42"} and event["attributes"] == {"source": "test"}
    assert [t.tracker for t in ciotrack_capture.trackers] == [app.tracker]
    assert [op["name"] for op in ciotrack_capture.events()] == ["through_the_default"]
    assert len(ciotrack_capture.all_operations) == 3
    assert app.tracker.flush(timeout=5) and app.tracker.stats().delivered == 2
    app.tracker.close()
    assert not recorder.wait_requests(1, timeout=0.5)  # nothing reached the socket
    assert recorder.requests == []


def test_capture_all_without_pytest_fixtures(recorder: RecordingServer) -> None:
    with capture_all() as captured:
        first, second = SignupApp(recorder.url), SignupApp(recorder.url)
        first.signup("1")
        second.signup("2")
    assert [len(t.operations) for t in captured.trackers] == [2, 2]
    assert [e["identifiers"]["id"] for e in captured.events(name="signed_up")] == ["1", "2"]
    assert captured.of(second.tracker).identifies("2")[0]["attributes"] == {"plan": "free"}
    # Made inside, a capture for good: calls after the block still send nothing.
    first.signup("3")
    assert len(captured.of(first.tracker).events()) == 2
    outside = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, flush_interval=0.02, rate_limit=0)
    outside.track("4", "really_sent")
    assert outside.flush(timeout=5)
    outside.close()
    first.tracker.close()
    second.tracker.close()
    assert [op["name"] for op in recorder.ops()] == ["really_sent"]
    with pytest.raises(LookupError):
        captured.of(outside)


def test_trackers_made_on_other_threads_and_from_a_config_are_captured(recorder: RecordingServer) -> None:
    import threading

    from ciotrack.config import Config

    made: list[Tracker] = []
    with capture_all() as captured:
        thread = threading.Thread(target=lambda: made.append(SignupApp(recorder.url).tracker))
        thread.start()
        thread.join()
        made.append(Tracker(config=Config(site_id=SITE_ID, api_key=API_KEY, endpoint=recorder.url)))
        made.append(Tracker())  # no credentials at all: a capture needs none
        for tracker in made:
            tracker.track("t", "from_anywhere")
    assert len(captured.events(name="from_anywhere")) == 3
    for tracker in made:
        tracker.close()
    assert recorder.requests == []


def run_pytest(tmp_path: Path, test_source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(test_source))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p",
                           "no:cacheprovider", str(tmp_path / "test_app.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIOTRACK_")}
    env["PYTHONPATH"] = PYTHON_DIR
    env.update(extra)
    return env


def test_a_pytest_run_with_the_fixture_sends_nothing_and_ends(tmp_path: Path, recorder: RecordingServer) -> None:
    source = f'''
        from ciotrack import Tracker

        APP_TRACKER = None

        def test_signup(ciotrack_capture):
            global APP_TRACKER
            APP_TRACKER = Tracker("{SITE_ID}", "{API_KEY}", endpoint="{recorder.url}", exit_timeout=30)
            for i in range(100):
                APP_TRACKER.track("42", "signed_up", {{"i": i}})
            assert len(ciotrack_capture.of(APP_TRACKER).events(name="signed_up")) == 100
            print("CAPTURED-OK")
        '''
    # The app's tracker is never closed: at exit nothing is queued, so nothing is sent or awaited.
    done = run_pytest(tmp_path, source, child_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert recorder.requests == []


def test_ciotrack_capture_env_switch(tmp_path: Path, recorder: RecordingServer) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f'''
        from ciotrack import Tracker
        from ciotrack.testing import environment_capture

        tracker = Tracker("{SITE_ID}", "{API_KEY}", endpoint="{recorder.url}")
        tracker.track("42", "checkout", {{"total": 12.5}})
        tracker.flush()
        print(len(environment_capture().events(name="checkout")))
        '''))
    done = subprocess.run([sys.executable, str(script)], env=child_env(CIOTRACK_CAPTURE="1"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert recorder.requests == []
    # The same script without the switch does send (the recorder is a real server).
    done = subprocess.run([sys.executable, str(script)], env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [op["name"] for op in recorder.ops()] == ["checkout"]
