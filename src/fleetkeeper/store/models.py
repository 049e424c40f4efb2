"""The relational schema, one for SQLite and PostgreSQL. Migrations live in `migrations/`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleetkeeper.store.types import BinaryString, JSONType, UTCDateTime


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    # None: a platform user who sees every tenant.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # sha256 of the whole token: tokens are high-entropy, so a slow password hash buys nothing.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeviceModel(Base):
    __tablename__ = "device_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    manufacturer: Mapped[str | None] = mapped_column(String(200))
    hardware_revision: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    capabilities: Mapped[list[str]] = mapped_column(JSONType, default=list)
    config_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Monitoring: a unit of this model counts as offline after this long without a check-in
    # (None: the server's online window), and its sensors' physical ranges {metric: [lo, hi]}.
    offline_after_seconds: Mapped[int | None] = mapped_column(Integer)
    metric_ranges: Mapped[dict[str, list[float]] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    serial: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("device_models.id"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    state: Mapped[str] = mapped_column(String(32))
    firmware_version: Mapped[str | None] = mapped_column(String(100))
    firmware_key: Mapped[str | None] = mapped_column(BinaryString(120))
    hardware_revision: Mapped[str | None] = mapped_column(String(100))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    location: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Identity: the device's own Ed25519 public key (base64), never a private key.
    public_key: Mapped[str | None] = mapped_column(String(64))
    # Bumped to revoke every access token the device holds (tokens carry the generation).
    credential_generation: Mapped[int] = mapped_column(Integer, default=0)
    enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    certificate_serial: Mapped[str | None] = mapped_column(String(48))
    claim_code_hash: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    wipe_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    replaced_by: Mapped[str | None] = mapped_column(BinaryString(36))
    replaces: Mapped[str | None] = mapped_column(BinaryString(36))

    __table_args__ = (
        Index("ix_devices_model_firmware", "model_id", "firmware_key"),
        Index("ix_devices_tenant_id", "tenant_id", "id"),
        Index("ix_devices_firmware", "firmware_key"),
        Index("ix_devices_last_seen", "last_seen"),
        Index("ix_devices_state", "state"),
        # Replicas ask "which devices changed since" every second (services/device_cache.py).
        Index("ix_devices_updated_at", "updated_at"),
        # Equality on attributes.* compiles to containment (@>), which this index serves.
        Index(
            "ix_devices_attributes",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ).ddl_if(dialect="postgresql"),
    )


class DeviceTag(Base):
    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)

    __table_args__ = (Index("ix_device_tags_tag", "tag", "device_id"),)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    # A dynamic group is defined by a fleet query; a static group (query None) by its members.
    query: Mapped[str | None] = mapped_column(Text)
    # The members' own maintenance windows ([{cron, duration, timezone}]); rollouts honour them.
    maintenance_windows: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_groups_tenant_name"),)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_group_members_device", "device_id", "group_id"),)


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(100), index=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Canonical JSON text, exactly as hashed: a JSON column could re-render numbers on the way
    # back (JSONB turns 1e20 into 100000000000000000000) and break verification.
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ProvisioningToken(Base):
    """A batch credential baked into firmware that lets devices register themselves."""

    __tablename__ = "provisioning_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("device_models.id"))
    serial_pattern: Mapped[str | None] = mapped_column(String(200))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    auto_accept: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeviceChallenge(Base):
    """An outstanding authentication challenge: single use, short-lived."""

    __tablename__ = "device_challenges"

    challenge_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Command(Base):
    """A one-off command to one device, with its outcome."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    timeout: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    output: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_commands_device_state", "device_id", "state", "created_at"),)


class TelemetryPoint(Base):
    """One measurement. The key makes a resent batch idempotent."""

    __tablename__ = "telemetry"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)  # device time
    value: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # server time


class _Rollup:
    """min/max/sum/count of one metric of one device over one bucket (its start time)."""

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    min_value: Mapped[float] = mapped_column(Float)
    max_value: Mapped[float] = mapped_column(Float)
    sum_value: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)


class TelemetryMinute(_Rollup, Base):
    __tablename__ = "telemetry_1m"
    __table_args__ = (Index("ix_telemetry_1m_bucket", "bucket"),)


class TelemetryHour(_Rollup, Base):
    __tablename__ = "telemetry_1h"
    __table_args__ = (Index("ix_telemetry_1h_bucket", "bucket"),)


class TelemetryLatest(Base):
    """Each device's newest reading of each metric: what fleet queries (`battery < 20`) read."""

    __tablename__ = "telemetry_latest"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_telemetry_latest_metric_value", "metric", "value"),)


class DeviceHealth(Base):
    """A health flag a device carries now (a detector's finding), with its evidence."""

    __tablename__ = "device_health"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    flag: Mapped[str] = mapped_column(String(40), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for device-wide
    detector: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_device_health_flag", "flag", "device_id"),)


class MonitorEvent(Base):
    """What monitoring saw happen to a device: health flags raised and cleared, geofences
    entered and left. The alerting engine reads these."""

    __tablename__ = "monitor_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (Index("ix_monitor_events_device_at", "device_id", "at"),)


class DevicePosition(Base):
    """Where a device said it was, and when (server time of the report)."""

    __tablename__ = "device_positions"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    alt: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)


class Geofence(Base):
    """An area of a tenant (a site's yard, a city): a circle or a polygon, in WGS 84."""

    __tablename__ = "geofences"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    site: Mapped[str | None] = mapped_column(String(100))
    shape: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_geofences_tenant_name"),)


class GeofencePresence(Base):
    """A device inside a geofence, since when: what turns positions into enter/leave events."""

    __tablename__ = "geofence_presence"

    geofence_id: Mapped[str] = mapped_column(
        ForeignKey("geofences.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    since: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_geofence_presence_device", "device_id"),)


class DeviceLog(Base):
    __tablename__ = "device_logs"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_device_logs_device_at", "device_id", "at"),)


class SecurityEvent(Base):
    """Refused credentials, bad signatures, replays: what intrusion detection reads."""

    __tablename__ = "security_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    device_id: Mapped[str | None] = mapped_column(String(36), index=True)
    serial: Mapped[str | None] = mapped_column(String(128))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)


class ServerSecret(Base):
    """Server-wide key material shared by every replica (device CA, token signing key)."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReleaseKey(Base):
    """A trusted Ed25519 release key: artifacts signed by it are accepted (public half only)."""

    __tablename__ = "release_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # sha256(public key)[:16]
    name: Mapped[str] = mapped_column(String(100))
    public_key: Mapped[str] = mapped_column(String(64))  # base64 of the 32 raw bytes
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Artifact(Base):
    """A signed update payload; the bytes live in the artifact store under `storage_key`."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # full, package, delta
    base_version: Mapped[str | None] = mapped_column(String(100))  # delta: applies on top of
    models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    hardware_revisions: Mapped[list[str]] = mapped_column(JSONType, default=list)  # [] any
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    signature: Mapped[str] = mapped_column(String(100))  # base64 Ed25519 of the signed message
    key_id: Mapped[str] = mapped_column(String(16))
    release_notes: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(300))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("name", "version", name="uq_artifacts_name_version"),)


class Deployment(Base):
    """An artifact or a bulk operation sent to a target under a rollout policy."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # None: created by a platform user, may span tenants.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(16))  # update, command
    artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"))
    command: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # {name, args}
    target: Mapped[str] = mapped_column(Text)  # fleet query
    continuous: Mapped[bool] = mapped_column(Boolean, default=False)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    # The planner's memory (services/rollout/planner.RolloutState).
    phase: Mapped[int] = mapped_column(Integer, default=0)
    phase_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    threshold_met_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rate: Mapped[float] = mapped_column(Float, default=0.0)
    credit: Mapped[float] = mapped_column(Float, default=0.0)
    last_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notified_at_rate: Mapped[int] = mapped_column(Integer, default=0)
    succeeded_at_rate: Mapped[int] = mapped_column(Integer, default=0)
    # Scheduling: when to look again, and which replica holds it until when.
    next_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    # What a resume accepted: {"<phase>": unsuccessful executions, "health": phase} that no
    # longer count against the thresholds.
    acknowledged: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Execution(Base):
    """One device's part in a deployment."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    phase: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # order within the deployment
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # Hand the job to the device at its next check-in (notified, cancel or rollback asked).
    deliver: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())  # jitter and retries
    step_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    from_version: Mapped[str | None] = mapped_column(String(100))
    to_version: Mapped[str | None] = mapped_column(String(100))
    last_active: Mapped[str | None] = mapped_column(String(16))  # state before it ended
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # with jitter: future
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # last handed out
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("deployment_id", "device_id", name="uq_executions_deployment_device"),
        Index("ix_executions_deployment_state", "deployment_id", "state", "phase"),
        Index("ix_executions_device_state", "device_id", "state"),
        Index("ix_executions_deliver", "deliver", "device_id"),
        Index("ix_executions_deadline", "step_deadline"),
        # A deployment's executions page by page, in id order (API and dashboard lists).
        Index("ix_executions_deployment_id", "deployment_id", "id"),
    )


class DeploymentEvent(Base):
    """The deployment's timeline: phases, rate changes, pauses, aborts, operator actions."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


# --- alerting (services/alerting/, docs/alerting.md) ----------------------------------------------


class AlertChannel(Base):
    """Where notifications go: a webhook, an e-mail address list, or a chat webhook."""

    __tablename__ = "alert_channels"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # webhook, email, chat
    url: Mapped[str] = mapped_column(String(2000))  # http(s):// or smtp://host:port
    # The HMAC key webhooks are signed with: the signature needs it, so it cannot be hashed.
    # It is never returned by the API (only whether one is set).
    secret: Mapped[str | None] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # to, rate limit
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_alert_channels_tenant_name"),)


class AlertRuleRecord(Base):
    """A rule as an operator wrote it (`definition`, an `AlertRule` as JSON)."""

    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_alert_rules_tenant_name"),)


class AlertRecord(Base):
    """One episode of one rule's condition on one subject. While it is open (pending or
    firing) `open_fingerprint` holds its fingerprint, unique: the same condition never opens
    twice; resolved alerts keep NULL there (both databases allow many NULLs)."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(String(16), index=True)
    open_fingerprint: Mapped[str | None] = mapped_column(String(16), unique=True)
    device_id: Mapped[str | None] = mapped_column(BinaryString(36), index=True)
    state: Mapped[str] = mapped_column(String(16))  # pending, firing, resolved
    severity: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    value: Mapped[float | None] = mapped_column(Float)
    active_since: Mapped[datetime] = mapped_column(UTCDateTime())
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_note: Mapped[str | None] = mapped_column(Text)
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    flips: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    clear_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    incident_id: Mapped[str | None] = mapped_column(BinaryString(36), index=True)
    # Muted: silence ids / inhibiting fingerprints as the dispatcher last saw them.
    muted_by: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # An operator's ack or resolve, not yet taken in by the engine (it runs elsewhere).
    operator_action: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The engine looks for operators' actions among the rows changed lately.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (
        Index("ix_alerts_tenant_state", "tenant_id", "state", "active_since"),
        Index("ix_alerts_rule_state", "rule_id", "state"),
        # The dashboard's counters (open alerts by state and severity) read only this index.
        Index("ix_alerts_state_severity", "state", "severity", "tenant_id", "acknowledged_at"),
    )


class AlertSilence(Base):
    """A time-bounded mute by label matchers, with who set it and why."""

    __tablename__ = "alert_silences"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    matchers: Mapped[list[Any]] = mapped_column(JSONType)  # ["site=oslo-3", ...]
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    author: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AlertInhibitRule(Base):
    """While an alert matching `source` fires, alerts matching `target` with the same values
    of the `equal` labels are muted."""

    __tablename__ = "alert_inhibit_rules"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    source: Mapped[list[Any]] = mapped_column(JSONType)
    target: Mapped[list[Any]] = mapped_column(JSONType)
    equal: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_alert_inhibit_rules_tenant_name"),
    )


class AlertIncident(Base):
    """Many devices firing one rule together (one notification group), as one event."""

    __tablename__ = "alert_incidents"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    rule: Mapped[str] = mapped_column(String(100))
    group_key: Mapped[str] = mapped_column(String(500))
    labels: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    firing: Mapped[int] = mapped_column(Integer, default=0)
    peak: Mapped[int] = mapped_column(Integer, default=0)
    alerts: Mapped[int] = mapped_column(Integer, default=0)  # attached, ever
    scope: Mapped[int | None] = mapped_column(Integer)  # devices in the rule's scope
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AlertNotification(Base):
    """One notification to one channel, and its delivery: the notification log and the
    dead-letter list (state `dead`, replayable)."""

    __tablename__ = "alert_notifications"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    channel_id: Mapped[str | None] = mapped_column(
        ForeignKey("alert_channels.id", ondelete="SET NULL"), index=True
    )
    group_key: Mapped[str] = mapped_column(String(500), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # group, incident, digest, test, escalation
    title: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # The firing fingerprints it told of: a restarted engine resumes its groups from them.
    notified: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    incident_id: Mapped[str | None] = mapped_column(BinaryString(36))
    state: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed (retrying), dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_alert_notifications_due", "state", "next_attempt_at"),
        Index("ix_alert_notifications_tenant_created", "tenant_id", "created_at"),
    )


class RemediationAction(Base):
    """One automatic action a rule's remediation policy took on a device (or refused to take:
    `skipped` with the reason, when the cooldown or the budget held it back)."""

    __tablename__ = "remediation_actions"

    id: Mapped[str] = mapped_column(BinaryString(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    alert_id: Mapped[str] = mapped_column(BinaryString(36), index=True)
    device_id: Mapped[str] = mapped_column(BinaryString(36))
    step: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(100))
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    command_id: Mapped[str | None] = mapped_column(BinaryString(36))
    # sent, succeeded (the alert resolved), failed (it did not within the step's wait),
    # skipped (cooldown, budget)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_remediation_actions_rule_at", "rule_id", "at"),
        # Ladders in progress (state 'sent') are looked up every engine tick.
        Index("ix_remediation_actions_state", "state"),
        Index("ix_remediation_actions_device_rule", "device_id", "rule_id", "at"),
    )


class WebSession(Base):
    """A dashboard login. The cookie holds a random value; only its sha256 is stored, so a
    copy of the database opens no session."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Echoed in every form and fetch that changes something (double submit, bound to the session).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SavedQuery(Base):
    """A fleet query a dashboard user keeps under a name (the device list's saved queries)."""

    __tablename__ = "saved_queries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    query: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_saved_queries_user_name"),)
