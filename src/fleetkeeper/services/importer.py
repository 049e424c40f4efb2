"""Bulk registration from CSV or JSON: every row validated first, then all written or none.

CSV: a header row of device field names (`serial`, `model`, `name`, `tenant`, `state`,
`firmware_version`, `hardware_revision`, `tags` separated by `;`, `location.lat`,
`location.lon`, `location.alt`, `attributes.<key>`). Attribute cells are text, except whole
numbers and decimals written plainly (`3`, `-2.5`, not `007` or `1e5`) and `true`/`false`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import BadRequest, Invalid
from fleetkeeper.ids import uuid7
from fleetkeeper.schemas.devices import DeviceCreate
from fleetkeeper.services import audit, lifecycle
from fleetkeeper.services.context import Change
from fleetkeeper.services.identity import decode_public_key, hash_claim_code
from fleetkeeper.store.models import Device, DeviceModel, DeviceTag, Tenant
from fleetkeeper.versions import firmware_key

MAX_ROWS = 200_000
MAX_REPORTED_ERRORS = 1000
_CHUNK = 1000
_PLAIN_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?$")
_CSV_FIELDS = {
    "serial",
    "model",
    "name",
    "tenant",
    "state",
    "firmware_version",
    "hardware_revision",
    "tags",
    "public_key",
    "claim_code",
    "location.lat",
    "location.lon",
    "location.alt",
}


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row (CSV: the header is not counted)
    field: str
    message: str


@dataclass(frozen=True)
class ImportResult:
    created: int


def _cell_value(text: str) -> Any:
    if _PLAIN_NUMBER.match(text):
        return float(text) if "." in text else int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def parse_csv(body: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(body))
    try:
        header = next(reader)
    except StopIteration:
        raise BadRequest("empty CSV: expected a header row", field="body") from None
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in _CSV_FIELDS and not h.startswith("attributes.")]
    if unknown:
        raise BadRequest(
            f"unknown CSV column(s) {', '.join(map(repr, unknown))}; columns are "
            f"{', '.join(sorted(_CSV_FIELDS))} and attributes.<key>",
            field="header",
        )
    if "serial" not in header or "model" not in header:
        raise BadRequest("CSV header needs at least the columns serial and model", field="header")
    rows: list[dict[str, Any]] = []
    for line in reader:
        if not any(cell.strip() for cell in line):
            continue
        if len(line) != len(header):
            rows.append({"__error__": f"has {len(line)} cells, the header has {len(header)}"})
            continue
        row: dict[str, Any] = {}
        for name, cell in zip(header, line, strict=True):
            cell = cell.strip()
            if cell == "":
                continue
            if name == "tags":
                row["tags"] = [t.strip() for t in cell.split(";") if t.strip()]
            elif name.startswith("location."):
                row.setdefault("location", {})[name.split(".", 1)[1]] = cell
            elif name.startswith("attributes."):
                row.setdefault("attributes", {})[name.split(".", 1)[1]] = _cell_value(cell)
            else:
                row[name] = cell
        rows.append(row)
    return rows


def parse_json(body: bytes) -> list[Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}", field="body") from None
    if isinstance(data, dict) and isinstance(data.get("devices"), list):
        data = data["devices"]
    if not isinstance(data, list):
        raise BadRequest("expected a JSON list of devices", field="body")
    return data


def _validate(rows: list[Any], errors: list[RowError]) -> list[tuple[int, DeviceCreate]]:
    valid: list[tuple[int, DeviceCreate]] = []
    for number, raw in enumerate(rows, start=1):
        if isinstance(raw, dict) and "__error__" in raw:
            errors.append(RowError(number, "row", raw["__error__"]))
            continue
        try:
            valid.append((number, DeviceCreate.model_validate(raw)))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "row"
                errors.append(RowError(number, field, err["msg"]))
    return valid


async def _existing_serials(session: AsyncSession, serials: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(serials), _CHUNK):
        chunk = serials[i : i + _CHUNK]
        found.update(
            (await session.scalars(select(Device.serial).where(Device.serial.in_(chunk)))).all()
        )
    return found


async def import_devices(session: AsyncSession, change: Change, rows: list[Any]) -> ImportResult:
    principal = change.principal
    principal.require("devices:write")
    if len(rows) > MAX_ROWS:
        raise Invalid(f"{len(rows)} rows; at most {MAX_ROWS} per import", field="body")
    if not rows:
        raise Invalid("nothing to import: no rows", field="body")
    errors: list[RowError] = []
    valid = _validate(rows, errors)
    models = dict((await session.execute(select(DeviceModel.name, DeviceModel.id))).all())
    tenants = set((await session.scalars(select(Tenant.id))).all())
    default_tenant = principal.tenant_id or "default"
    seen: dict[str, int] = {}
    for number, dev in valid:
        if dev.model not in models:
            errors.append(RowError(number, "model", f"unknown device model {dev.model!r}"))
        tenant = dev.tenant or default_tenant
        if tenant not in tenants:
            errors.append(RowError(number, "tenant", f"unknown tenant {tenant!r}"))
        elif principal.tenant_id is not None and tenant != principal.tenant_id:
            errors.append(RowError(number, "tenant", f"tenant {tenant!r} is outside yours"))
        try:
            lifecycle.check_initial(dev.state or "registered")
        except Invalid as exc:
            errors.append(RowError(number, "state", exc.detail))
        if dev.public_key is not None:
            try:
                decode_public_key(dev.public_key)
            except Invalid as exc:
                errors.append(RowError(number, "public_key", exc.detail))
        if dev.serial in seen:
            errors.append(
                RowError(number, "serial", f"serial {dev.serial!r} repeats row {seen[dev.serial]}")
            )
        else:
            seen[dev.serial] = number
    taken = await _existing_serials(session, list(seen))
    for number, dev in valid:
        if dev.serial in taken and seen.get(dev.serial) == number:
            errors.append(RowError(number, "serial", f"a device with serial {dev.serial!r} exists"))
    if errors:
        errors.sort(key=lambda e: e.row)
        raise Invalid(
            f"{len(errors)} problem(s) in {len({e.row for e in errors})} row(s); nothing was "
            f"imported. First: row {errors[0].row}, {errors[0].field}: {errors[0].message}",
            errors=[e.__dict__ for e in errors[:MAX_REPORTED_ERRORS]],
            error_count=len(errors),
        )
    now = change.now()
    devices: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for _, dev in valid:
        device_id = uuid7(now)
        devices.append(
            {
                "id": device_id,
                "serial": dev.serial,
                "name": dev.name or dev.serial,
                "model_id": models[dev.model],
                "tenant_id": dev.tenant or default_tenant,
                "state": dev.state or "registered",
                "firmware_version": dev.firmware_version,
                "firmware_key": firmware_key(dev.firmware_version),
                "hardware_revision": dev.hardware_revision,
                "attributes": dev.attributes,
                "location": dev.location.model_dump(exclude_none=True) if dev.location else None,
                "last_seen": None,
                "public_key": dev.public_key,
                "claim_code_hash": hash_claim_code(dev.claim_code) if dev.claim_code else None,
                "credential_generation": 0,
                "wipe_pending": False,
                "created_at": now,
                "updated_at": now,
            }
        )
        tags.extend({"device_id": device_id, "tag": t} for t in dev.tags)
    for i in range(0, len(devices), 5000):
        await session.execute(insert(Device), devices[i : i + 5000])
    for i in range(0, len(tags), 5000):
        await session.execute(insert(DeviceTag), tags[i : i + 5000])
    by_tenant: dict[str, list[str]] = {}
    for d in devices:
        by_tenant.setdefault(d["tenant_id"], []).append(d["serial"])
    for tenant_id, serials in sorted(by_tenant.items()):
        await audit.append(
            session,
            change,
            action="device.import",
            target=f"tenant:{tenant_id}",
            tenant_id=tenant_id,
            after={"count": len(serials), "serials": serials},
        )
    return ImportResult(created=len(devices))
