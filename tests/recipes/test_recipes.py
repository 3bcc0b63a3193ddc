"""The README's recipes, as written there, under their real servers, sending to an emulator.

Each recipe block is written to a temporary directory under its file name and run the way the README
says: Flask under gunicorn (2 sync workers), FastAPI under uvicorn (lifespan + ``flush_async``), Django's
WSGI app under gunicorn (``AppConfig.ready``), a Celery prefork worker (``worker_process_init`` /
``worker_process_shutdown``) over kombu's filesystem broker, with events still queued at its warm
shutdown. HTTP requests (or tasks) go in; the test
then stops the server with SIGTERM as a process manager would, and checks that it exited cleanly and
that the emulator holds exactly one event per request, from the people the requests named.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from readme_blocks import recipes

from celery_worker import run_until_tasks_done
from ciotrack.emulator import Emulator

from conftest import API_KEY, SITE_ID, all_events, free_port

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 12


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    for name, code in recipes().items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
        if target.parent != tmp_path:
            (target.parent / "__init__.py").touch()
    return tmp_path


def app_env(emulator: Emulator, recipe_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIOTRACK_")}
    env.update(CIOTRACK_ENDPOINT=emulator.url, CIOTRACK_SITE_ID=SITE_ID, CIOTRACK_API_KEY=API_KEY,
               PYTHONPATH=os.pathsep.join([str(recipe_dir), str(ROOT / "python")]), NO_PROXY="127.0.0.1", **extra)
    return env


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited early ({proc.returncode})"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


Serve = Callable[[list[str], int], "subprocess.Popen[bytes]"]


@pytest.fixture
def serve(recipe_dir: Path, emulator: Emulator) -> Iterator[Serve]:
    """``serve(argv)``: start a server (cwd = the recipe dir) on a free port, yield (port, process)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=recipe_dir, env=app_env(emulator, recipe_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        started.append(proc)
        wait_listening(port, proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes], codes: tuple[int, ...] = (0,)) -> str:
    """SIGTERM (what systemd, Kubernetes and supervisors send), then the process's stderr."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    text = stderr.decode("utf-8", "replace")
    assert proc.returncode in codes, text
    assert "Traceback" not in text, text
    return text


def post_checkouts(port: int, path: str) -> None:
    with requests.Session() as session:
        session.trust_env = False
        for i in range(REQUESTS):
            response = session.post(f"http://127.0.0.1:{port}{path.format(user=f'user-{i}')}?total={i}.5", timeout=30)
            assert response.status_code == 200 and response.json() == {"ok": True}, response.text


def assert_one_event_per_request(emulator: Emulator, name: str = "checkout") -> None:
    assert emulator.wait_for(lambda: len(all_events(emulator.state())) >= REQUESTS, timeout=30)
    state = emulator.state()
    events = [e for e in all_events(state) if e["name"] == name]
    assert len(events) == REQUESTS == len(all_events(state))
    assert sorted(state["people"]) == sorted(f"user-{i}" for i in range(REQUESTS))
    for i in range(REQUESTS):
        [event] = state["people"][f"user-{i}"]["events"]
        assert event["data"] == {"total": i + 0.5}


def test_flask_under_gunicorn(serve: Serve, emulator: Emulator) -> None:
    port = free_port()
    proc = serve([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "flask_app:app"], port)
    post_checkouts(port, "/checkout/{user}")
    stop(proc)
    assert_one_event_per_request(emulator)


def test_fastapi_under_uvicorn(serve: Serve, emulator: Emulator) -> None:
    port = free_port()
    proc = serve([sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)],
                 port)
    post_checkouts(port, "/checkout/{user}")
    # uvicorn >= 0.29 re-raises the signal once its graceful shutdown is over, hence -SIGTERM.
    stderr = stop(proc, codes=(0, -signal.SIGTERM))
    assert "Application shutdown complete" in stderr  # the lifespan's exit (flush_async, close) ran
    assert_one_event_per_request(emulator)


def test_django_wsgi_under_gunicorn(serve: Serve, emulator: Emulator, recipe_dir: Path) -> None:
    shutil.copytree(Path(__file__).parent / "django_support" / "mysite", recipe_dir / "mysite")
    port = free_port()
    proc = serve([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "mysite.wsgi"], port)
    post_checkouts(port, "/checkout/{user}")
    stop(proc)
    assert_one_event_per_request(emulator)


CELERY_WRAPPER = '''
"""The README's celery_tasks module as-is, on kombu's filesystem broker (no Redis in the test)."""
import os

from celery_tasks import app, charge  # noqa: F401

folder = os.environ["BROKER_FOLDER"]
app.conf.broker_url = "filesystem://"
app.conf.broker_transport_options = {"data_folder_in": folder, "data_folder_out": folder}
app.conf.worker_hijack_root_logger = False
'''


def test_celery_prefork_worker(recipe_dir: Path, emulator: Emulator) -> None:
    folder = recipe_dir / "broker"
    folder.mkdir()
    (recipe_dir / "celery_test_app.py").write_text(CELERY_WRAPPER)
    env = app_env(emulator, recipe_dir, BROKER_FOLDER=str(folder))
    producer = ("from celery_test_app import charge\n"
                f"for i in range({REQUESTS}):\n"
                "    charge.delay(f'user-{i}', i + 0.5)\n")
    subprocess.run([sys.executable, "-c", producer], cwd=recipe_dir, env=env, check=True, timeout=60)
    # Every request waits 2 s at the emulator, so when the last task has run the children still hold
    # queued or in-flight events: the warm shutdown must deliver them. (Both the recipe's
    # worker_process_shutdown handler and ciotrack's own receiver of that signal do; the children end
    # in os._exit, without atexit or multiprocessing's exit function: tests/lifecycle covers a
    # tracker made without the handler.)
    emulator.set_faults(latency=2.0)
    run = run_until_tasks_done(
        [sys.executable, "-m", "celery", "-A", "celery_test_app", "worker", "--pool=prefork", "--concurrency=2",
         "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=recipe_dir, env=env, tasks=REQUESTS, timeout=90,
        before_stop=lambda: len(all_events(emulator.state())))
    text, delivered_while_running = run.log, run.seen
    assert run.ran, text
    assert run.returncode == 0 and "Traceback" not in text, text
    assert delivered_while_running < REQUESTS  # the shutdown path really had events to deliver
    state = emulator.state()
    events = all_events(state)
    assert len(events) == REQUESTS and {e["name"] for e in events} == {"charged"}
    assert {p: person["events"][0]["data"]["total"] for p, person in state["people"].items()} == {
        f"user-{i}": i + 0.5 for i in range(REQUESTS)}
