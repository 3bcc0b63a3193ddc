"""``ciotrack doctor``: checks an integration before launch and says what to set.

``diagnose(options) -> Report`` runs the checks (credentials, region, network, clock, process
model, spool, and with a Redis URL the fleet); ``Report.render()`` is the text report,
``Report.to_json()`` the versioned JSON document (:data:`ciotrack.doctor.report.SCHEMA`). Every probe
is read-only: no event is ever sent.
"""

from ciotrack.doctor.cli import diagnose
from ciotrack.doctor.report import SCHEMA, SCHEMA_ID, Check, Report

__all__ = ["SCHEMA", "SCHEMA_ID", "Check", "Report", "diagnose"]
