"""The device side of the device API (docs/protocol.md), shared by the agent and the simulator.

This package speaks HTTP to a server and never imports the server (`fleetkeeper.api`,
`fleetkeeper.services`, `fleetkeeper.store`): a device has none of it.
"""

from fleetkeeper.protocol.backoff import Backoff
from fleetkeeper.protocol.client import DeviceClient, Download
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.errors import (
    AlreadyEnrolled,
    AuthenticationFailed,
    CommandClosed,
    EnrollmentRefused,
    InvalidTransition,
    JobClosed,
    ProtocolError,
    RateLimited,
    Refused,
    Restricted,
    Retired,
    Revoked,
    Stopped,
    Unavailable,
)
from fleetkeeper.protocol.keys import (
    KeyFileError,
    generate_key,
    load_key,
    load_or_create_key,
    public_key_b64,
    save_key,
    sign_b64,
)
from fleetkeeper.protocol.messages import (
    ArtifactRef,
    CheckinResult,
    Command,
    DeviceView,
    Enrollment,
    Job,
    JobAnswer,
    Location,
    LogUpload,
    Point,
    Rejection,
    ReleaseKey,
    TelemetryResult,
)
from fleetkeeper.protocol.queue import TelemetryQueue

__all__ = [
    "AlreadyEnrolled",
    "ArtifactRef",
    "AuthenticationFailed",
    "Backoff",
    "CheckinResult",
    "Command",
    "CommandClosed",
    "Connectivity",
    "DeviceClient",
    "DeviceView",
    "Download",
    "Enrollment",
    "EnrollmentRefused",
    "InvalidTransition",
    "Job",
    "JobAnswer",
    "JobClosed",
    "KeyFileError",
    "Location",
    "LogUpload",
    "Point",
    "ProtocolError",
    "RateLimited",
    "Refused",
    "Rejection",
    "ReleaseKey",
    "Restricted",
    "Retired",
    "Revoked",
    "Stopped",
    "TelemetryQueue",
    "TelemetryResult",
    "Unavailable",
    "generate_key",
    "load_key",
    "load_or_create_key",
    "public_key_b64",
    "save_key",
    "sign_b64",
]
