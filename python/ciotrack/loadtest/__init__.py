"""``ciotrack loadtest``: k6-style ramping load through the real client (``loadtest`` extra).

Modules: ``stages`` (load shape, open-model scheduler), ``scenario`` (TOML scenarios, call mix),
``thresholds`` (k6 expressions), ``histogram`` (HdrHistogram per interval), ``driver`` (the run),
``report`` (JSON report, summaries, exit codes), ``live`` (progress), ``plot`` (PNG), ``presets``,
``cli``/``runner`` (the command). Nothing here is imported by ``import ciotrack``.
"""
