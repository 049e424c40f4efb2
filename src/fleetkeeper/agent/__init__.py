"""The Linux device agent (`fleetkeeper agent`): a device's side of Fleetkeeper.

It speaks the device API through `fleetkeeper.protocol` and, like it, never imports the server.
"""

from fleetkeeper.agent.commands import CommandRunner, Outcome
from fleetkeeper.agent.config import AgentConfig, ConfigError, Handler, load_config
from fleetkeeper.agent.enrolment import EnrollOptions
from fleetkeeper.agent.loop import Agent, AgentExit
from fleetkeeper.agent.metrics import METRICS, MetricDescription, MetricsCollector
from fleetkeeper.agent.state import Identity, StateDir, StateError

__all__ = [
    "METRICS",
    "Agent",
    "AgentConfig",
    "AgentExit",
    "CommandRunner",
    "ConfigError",
    "EnrollOptions",
    "Handler",
    "Identity",
    "MetricDescription",
    "MetricsCollector",
    "Outcome",
    "StateDir",
    "StateError",
    "load_config",
]
