"""Identifiers: time-ordered UUIDs (version 7) so ids sort in creation order."""

from __future__ import annotations

import os
import uuid
from datetime import datetime


def uuid7(at: datetime) -> str:
    millis = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))
