"""A local Customer.io Track API (v1 + v2) emulator with faults on demand.

    from ciotrack.emulator import Emulator

    with Emulator(workspaces={"site": "key"}) as emulator:
        ...  # point a client at emulator.url
        emulator.wait_events(10)
        emulator.state()["people"]["42"]["events"]

Pure Python: it does not need ciotrack's native core.
"""

from ciotrack.emulator.emulator import DEFAULT_WORKSPACES, Emulator
from ciotrack.emulator.faults import Faults
from ciotrack.emulator.handle import EmulatorProcess

__all__ = ["DEFAULT_WORKSPACES", "Emulator", "EmulatorProcess", "Faults"]
