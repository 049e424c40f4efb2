"""Safe-mode A/B updates on the device: the jobs of docs/ota.md, "Device side".

- `machine`: the job's steps as a pure state machine (transition tables, no I/O);
- `driver`: performs each step and reports it (`download`: the bytes on their way);
- `worker`: takes jobs from check-ins;
- `slots`: where updates go (`SlotHandler`; `DirectorySlots`, `ScriptSlots`);
- `journal`: what survives a power loss; `trust`: release keys and signatures.
"""

from fleetkeeper.agent.update.journal import Journal
from fleetkeeper.agent.update.machine import Event, Readings, Report, Step, UpdateState
from fleetkeeper.agent.update.slots import DirectorySlots, ScriptSlots, SlotError, SlotHandler
from fleetkeeper.agent.update.trust import TrustStore
from fleetkeeper.agent.update.worker import UpdateWorker, build_slots

__all__ = [
    "DirectorySlots",
    "Event",
    "Journal",
    "Readings",
    "Report",
    "ScriptSlots",
    "SlotError",
    "SlotHandler",
    "Step",
    "TrustStore",
    "UpdateState",
    "UpdateWorker",
    "build_slots",
]
