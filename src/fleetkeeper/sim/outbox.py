"""What a device owes the server: command answers and job reports, oldest first.

Each waits in the device's outbox until the server has taken it, so a flaky link or an
unreachable server delays it but never loses it. A refusal drops it for good: a command that
expired, a job the server has closed (`job_closed`: the job's other reports go too, see
`jobs.answered`), or anything else the server will not take.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fleetkeeper.protocol.errors import CommandClosed, JobClosed
from fleetkeeper.protocol.messages import JobAnswer
from fleetkeeper.sim import jobs
from fleetkeeper.sim.device import Deferred, Report, SimDevice, World


async def send(dev: SimDevice, world: World) -> None:
    while dev.outbox:
        # Taken out first: what the answer sets off (a refused cancel) marks the next one.
        item = dev.outbox.pop(0)
        try:
            if isinstance(item, Report):
                await _report(dev, world, item)
            else:
                await _answer(dev, world, *item)
        except Deferred as exc:
            if not exc.refused:
                dev.outbox = [item, *(dev.outbox or ())]
                raise
    dev.outbox = None


async def _answer(dev: SimDevice, world: World, command_id: str, state: str, result: Any) -> None:
    async def request() -> None:
        # CommandClosed: it expired on the server before the device was done; nothing to do.
        with contextlib.suppress(CommandClosed):
            await dev.client.report_command(command_id, state, result)

    await dev.call(world, request)


async def _report(dev: SimDevice, world: World, report: Report) -> None:
    async def request() -> JobAnswer | None:
        try:
            return await dev.client.report_job(
                report.job_id,
                report.state,
                reason=report.reason,
                detail=report.detail,
                version=report.version,
                cancel_refused=report.cancel_refused,
            )
        except JobClosed:
            return None

    jobs.answered(dev, world, report, await dev.call(world, request))
