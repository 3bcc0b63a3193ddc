"""Live progress: a ``rich`` display on a terminal, one plain line per interval otherwise.

Off a terminal ``rich.live.Live`` draws nothing until it stops, so CI logs get their own periodic
lines (every ``every`` seconds), which say the same things: target vs achieved rate, the generator's
lateness and missed starts, delivery percentiles, backlog and 429s.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["PlainDisplay", "RichDisplay", "choose_display"]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def backlog_text(record: Mapping[str, Any]) -> str:
    """The backlog as the target counts it: operations in the tracker, or (fleet) the Redis stream's
    entries, lag (not yet read by a worker) + pending (read, not acknowledged)."""
    if "stream_lag" in record:
        return f"{record['backlog']:,} entries (lag {record['stream_lag']:,} + pending {record['stream_pending']:,})"
    return f"{record['backlog']:,}"


def plain_line(record: Mapping[str, Any], progress: Mapping[str, Any]) -> str:
    return (f"t={record['t']:>5.0f}s {progress['phase']:<5} target={record['target_rate']:>9,.0f}/s "
            f"achieved={record['achieved_rate']:>9,}/s late={progress['lateness_ms']:>6.1f}ms "
            f"dropped={record['dropped_iterations']:,} delivered={record['delivered_rate']:>8,}/s "
            f"delivery p50/p95/p99={_ms(record['delivery_p50'])}/{_ms(record['delivery_p95'])}/"
            f"{_ms(record['delivery_p99'])}ms backlog={backlog_text(record)} 429={record['http_429']} "
            f"cpu={record['cpu_percent']:.0f}%")


class PlainDisplay:
    def __init__(self, stream: IO[str] | None = None, every: int = 1) -> None:
        self.stream = stream or sys.stdout
        self.every = max(1, every)
        self._n = 0

    def interval(self, record: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
        self._n += 1
        if self._n % self.every == 0 or progress["phase"] == "drain" and record["backlog"] == 0:
            print(plain_line(record, progress), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichDisplay:
    """A progress bar over the stages and the latest interval's figures."""

    def __init__(self, title: str, duration: float) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[phase]}"),
                                 TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task(title, total=max(duration, 1e-9), phase="load")
        self.live = Live(self._render(None, None), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self, record: Mapping[str, Any] | None, progress: Mapping[str, Any] | None) -> Any:
        from rich.console import Group
        from rich.table import Table

        # Label/value rows rather than one wide row: readable on an 80-column terminal.
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        if record is not None and progress is not None:
            late = progress["lateness_ms"]
            dropped = record["dropped_iterations"]
            style = "red" if dropped else ("yellow" if late > 50 else "green")
            table.add_row("calls/s", f"target {record['target_rate']:,.0f}   achieved {record['achieved_rate']:,}")
            table.add_row("generator", f"[{style}]late {late:.1f} ms   dropped_iterations {dropped:,}[/]")
            table.add_row("delivered",
                          f"{record['delivered_rate']:,} events/s   backlog {backlog_text(record)}"
                          + ("" if "stream_lag" in record else " operations"))
            table.add_row("delivery", f"p50 {_ms(record['delivery_p50'])}   p95 {_ms(record['delivery_p95'])}   "
                                      f"p99 {_ms(record['delivery_p99'])} ms")
            status = ", ".join(f"{k}: {v:,}" for k, v in sorted(record["requests"].items())) or "-"
            table.add_row("requests", f"{status}   429s {record['http_429']}   retries {record['retries']}")
            table.add_row("client cpu", f"{record['cpu_percent']:.0f} %")
        return Group(self.progress, table)

    def interval(self, record: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
        self.progress.update(self.task, completed=min(progress["elapsed"], progress["duration"]),
                             phase=progress["phase"])
        self.live.update(self._render(record, progress))

    def close(self) -> None:
        self.live.stop()


def choose_display(title: str, duration: float, *, plain: bool, every: int = 1) -> PlainDisplay | RichDisplay:
    """Rich on a TTY (when ``rich`` is installed and ``plain`` is False), plain lines otherwise."""
    if not plain and sys.stdout.isatty():
        try:
            return RichDisplay(title, duration)
        except ImportError:
            pass
    return PlainDisplay(every=every)
