"""Enrolment: the one time a device registers its key, retried until the server answers.

A refusal (bad provisioning token, unknown model, serial out of scope) is final: a person must
act, so the agent ends with the server's reason rather than retrying for ever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fleetkeeper.agent import hardware
from fleetkeeper.agent.state import Identity
from fleetkeeper.protocol.backoff import Backoff, Sleep
from fleetkeeper.protocol.client import DeviceClient
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.errors import AlreadyEnrolled, Refused, Stopped, Unavailable

log = logging.getLogger("fleetkeeper.agent")


@dataclass(frozen=True)
class EnrollOptions:
    """How to enrol when the state dir holds no identity (None: ask the hardware)."""

    serial: str | None = None
    model: str | None = None
    provisioning_token: str | None = None


class EnrolmentFailed(Exception):
    pass


async def enroll(
    client: DeviceClient,
    options: EnrollOptions,
    inventory: dict[str, Any],
    *,
    connectivity: Connectivity,
    sleep: Sleep,
) -> tuple[Identity, str | None]:
    """The new identity, and the state the server put the device in (None if not told)."""
    serial = options.serial or hardware.default_serial()
    model = options.model or hardware.default_model()
    log.info("enrolling as serial %s, model %s", serial, model)
    backoff = Backoff(sleep=sleep)
    while True:
        try:
            done = await client.enroll(
                serial, model, provisioning_token=options.provisioning_token, **inventory
            )
        except Unavailable as exc:
            connectivity.lost(exc)
            await backoff.wait(exc)
            continue
        except AlreadyEnrolled as exc:
            # The answer to an earlier enrolment was lost. A server that names the device id
            # (it may: the proof shows this is the key it enrolled) lets us carry on.
            if exc.device_id is None:
                raise EnrolmentFailed(
                    f"serial {serial} is enrolled already, but this state dir has no identity: "
                    "restore it from a backup, or have an operator replace the device so it "
                    "can enrol anew"
                ) from None
            client.device_id = exc.device_id
            return Identity(exc.device_id, serial, model), None
        except Stopped:
            raise
        except Refused as exc:
            raise EnrolmentFailed(f"enrolment refused ({exc.code}): {exc.detail}") from None
        connectivity.restored()
        identity = Identity(done.device_id, serial, model, done.certificate, done.ca_certificate)
        return identity, done.state
