"""Checks of this host: the Python runtime, the process model, and the disk spool."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

from ciotrack.doctor.report import Report

__all__ = ["check_process", "check_spool"]


def check_process(report: Report) -> None:
    version = ".".join(map(str, sys.version_info[:3]))
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    report.add("python", "ok", f"CPython {version}{'' if gil else ', free-threaded (GIL off)'}")
    _check_server_hints(report)


def _check_server_hints(report: Report) -> None:
    gunicorn = os.environ.get("GUNICORN_CMD_ARGS", "")
    uwsgi = {k: v for k, v in os.environ.items() if k.startswith("UWSGI_")}
    if uwsgi:
        threads = uwsgi.get("UWSGI_ENABLE_THREADS", "").lower() in ("1", "true", "yes")
        hooks = uwsgi.get("UWSGI_PY_CALL_UWSGI_FORK_HOOKS", "").lower() in ("1", "true", "yes")
        if not threads:
            report.add("process", "fail", "uWSGI without enable-threads: ciotrack's sender threads never run",
                       "start uWSGI with --enable-threads (and --py-call-uwsgi-fork-hooks with --master)")
        elif not hooks:
            report.add("process", "warn", "uWSGI without py-call-uwsgi-fork-hooks: fork is seen only by the core's "
                       "pthread_atfork handler", "add --py-call-uwsgi-fork-hooks")
        else:
            report.add("process", "ok", "uWSGI with threads and fork hooks")
    elif gunicorn:
        preload = "--preload" in gunicorn.split()
        report.add("process", "ok", f"gunicorn{' --preload' if preload else ''}: each worker gets its own queue "
                   "and sender threads after the fork")
    else:
        report.add("process", "ok", "no fork server detected; under gunicorn --preload, uWSGI (--enable-threads) "
                   "or Celery prefork each forked worker starts its own sender")


def check_spool(report: Report, spool_dir: str | None, spool_max_bytes: int) -> None:
    if spool_dir is None:
        report.add("spool", "warn", "no spool_dir: what is queued in memory is lost on SIGKILL or an outage "
                   "longer than retry_budget", "set spool_dir (CIOTRACK_SPOOL_DIR) to a persistent local directory")
        return
    path = pathlib.Path(spool_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True) as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as exc:
        report.add("spool", "fail", f"spool_dir {str(path)!r} is not writable: {exc.strerror or exc}",
                   "point spool_dir at a directory this process can create files in")
        return
    free = shutil.disk_usage(path).free
    if free < spool_max_bytes:
        report.add("spool_space", "warn", f"{free / 2**20:,.0f} MiB free, less than spool_max_bytes "
                   f"({spool_max_bytes / 2**20:,.0f} MiB)", "free disk space or lower spool_max_bytes")
        report.recommend("spool_max_bytes", int(free * 0.8), "80 % of the free space")
    else:
        report.add("spool_space", "ok", f"{free / 2**30:,.1f} GiB free for a {spool_max_bytes / 2**20:,.0f} MiB cap")
    segments = [p for p in path.rglob("*.spool") if p.is_file()]
    if segments:
        size = sum(p.stat().st_size for p in segments)
        report.add("spool", "warn", f"writable; {len(segments)} segment(s), {size:,} bytes waiting to be replayed",
                   "start a tracker with this spool_dir and site id: it replays them when the API answers")
    else:
        report.add("spool", "ok", f"{str(path)!r} writable, nothing waiting to replay")
