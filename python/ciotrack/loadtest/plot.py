"""``--plot FILE.png``: the run over time (matplotlib, the ``plot`` extra, Agg backend: no display).

Three panels sharing the time axis: offered calls/s (target and achieved) and delivered events/s
with the workspace ceiling as a line; delivery duration p50/p95/p99 with the generator's worst
lateness per second; the backlog with 429s and missed starts (``dropped_iterations``) on a second
axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["write_plot"]


def write_plot(report: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    intervals = report["intervals"]
    config = report["config"]
    t = [r["t"] for r in intervals]
    fig, (ax_rate, ax_lat, ax_backlog) = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                                      gridspec_kw={"height_ratios": [3, 2, 2]})
    target = config["target"]
    title = (f"ciotrack loadtest — {config.get('preset') or 'custom'} against {target['kind']}"
             f" (rate limit {config['rate_limit']:g} req/s, "
             f"{config.get('concurrency') or str(config['senders']) + ' senders'})")
    fig.suptitle(title, fontsize=11)

    ax_rate.plot(t, [r["target_rate"] for r in intervals], label="target calls/s", color="tab:gray", linestyle="--")
    ax_rate.plot(t, [r["achieved_rate"] for r in intervals], label="achieved calls/s", color="tab:blue")
    ax_rate.plot(t, [r["delivered_rate"] for r in intervals], label="delivered events/s", color="tab:green")
    ceiling = config.get("ceiling_events_per_s")
    top = max([1.0] + [float(r["target_rate"]) for r in intervals] + [float(r["achieved_rate"]) for r in intervals])
    if ceiling and ceiling <= 3 * top:
        ax_rate.axhline(ceiling, color="tab:red", linestyle=":", label=f"workspace ceiling {ceiling:,.0f} events/s")
    elif ceiling:
        ax_rate.plot([], [], " ", label=f"workspace ceiling {ceiling:,.0f} events/s (off the chart)")
    ax_rate.set_ylabel("per second")
    ax_rate.legend(loc="upper left", fontsize=8)
    ax_rate.grid(alpha=0.3)

    for key, label, color in (("delivery_p50", "p50", "tab:green"), ("delivery_p95", "p95", "tab:orange"),
                              ("delivery_p99", "p99", "tab:red")):
        points = [(r["t"], r[key]) for r in intervals if r[key] is not None]
        if points:
            ax_lat.plot([p[0] for p in points], [p[1] for p in points], label=f"delivery {label}", color=color)
    late = [(r["t"], r["lateness_max_ms"]) for r in intervals if r.get("lateness_max_ms")]
    if late:
        ax_lat.plot([p[0] for p in late], [p[1] for p in late], label="generator lateness (max)", color="black",
                    linestyle=":", linewidth=1)
    ax_lat.set_ylabel("ms")
    if any(r["delivery_p99"] for r in intervals):
        ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize=8)
    ax_lat.grid(alpha=0.3, which="both")

    unit = "stream entries" if report["config"]["target"].get("kind") == "fleet" else "operations"
    ax_backlog.fill_between(t, [r["backlog"] for r in intervals], color="tab:purple", alpha=0.3,
                            label=f"backlog ({unit})")
    ax_backlog.set_ylabel(f"backlog ({unit})")
    ax_backlog.set_xlabel("seconds since start")
    ax_backlog.grid(alpha=0.3)
    ax_counts = ax_backlog.twinx()
    ax_counts.bar(t, [r["http_429"] for r in intervals], width=0.6, color="tab:red", alpha=0.7, label="HTTP 429 / s")
    ax_counts.plot(t, [r["dropped_iterations"] for r in intervals], color="black", linewidth=1,
                   label="dropped_iterations / s")
    ax_counts.set_ylabel("429s, missed starts")
    ax_counts.set_ylim(bottom=0, top=max([1] + [r["http_429"] for r in intervals]
                                         + [r["dropped_iterations"] for r in intervals]) * 1.2)
    handles = ax_backlog.get_legend_handles_labels()
    more = ax_counts.get_legend_handles_labels()
    ax_backlog.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8)

    totals = report["totals"]
    delivery = totals["delivery_duration"]
    lost = "not measured (--no-send)" if totals["lost"] is None else f"{totals['lost']:,}"
    footer = (f"{totals['calls']:,} calls, {totals['delivered']:,} delivered, lost {lost}, "
              f"429s {totals['http_429']}, dropped_iterations {totals['dropped_iterations']}, "
              f"delivery p95 {delivery['p95'] or 0:.0f} ms, backlog peak {totals['backlog_peak']:,}")
    fig.text(0.5, 0.01, footer, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
