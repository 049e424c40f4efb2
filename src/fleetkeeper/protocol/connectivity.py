"""Log once when the server becomes unavailable and once when it is back.

A device that retries every few seconds for an hour should leave two lines in its log, not a
thousand: the first failure (with its reason) and the first success after it.
"""

from __future__ import annotations

import logging


class Connectivity:
    def __init__(self, server: str, logger: logging.Logger | None = None) -> None:
        self.server = server
        self.online: bool | None = None  # None: not tried yet
        self._log = logger or logging.getLogger("fleetkeeper.protocol")

    def lost(self, reason: object) -> None:
        if self.online is not False:
            self._log.warning(
                "server %s is unavailable: %s (retrying; logged once until it is back)",
                self.server,
                reason,
            )
        self.online = False

    def restored(self) -> None:
        if self.online is False:
            self._log.info("server %s is available again", self.server)
        elif self.online is None:
            self._log.info("connected to server %s", self.server)
        self.online = True
