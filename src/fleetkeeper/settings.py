"""All server settings in one place, read from `FLEETKEEPER_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETKEEPER_", extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"),
        description="Folder for the SQLite database, artifacts and keys.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is a SQLite file inside the data dir. "
        "Use postgresql+asyncpg://user@host/db for PostgreSQL.",
    )
    mqtt_url: str | None = Field(default=None, description="MQTT broker URL (mqtt://host:1883).")
    admin_token: str | None = Field(
        default=None,
        description="When set, an admin API token with exactly this value exists (automation).",
    )
    admin_password: str | None = Field(
        default=None, description="When set, user `admin` exists with this password."
    )
    max_body_bytes: int = Field(
        default=1_048_576, description="Largest request body accepted by the JSON API (bytes)."
    )
    max_import_bytes: int = Field(
        default=64 * 1_048_576, description="Largest bulk-import body accepted (bytes)."
    )
    max_artifact_bytes: int = Field(
        default=2 * 1024**3, description="Largest artifact that may be uploaded (bytes)."
    )
    device_max_body_bytes: int = Field(
        default=262_144, description="Largest request body on the device API (bytes)."
    )
    device_max_log_bytes: int = Field(
        default=1_048_576, description="Largest log upload from a device (bytes)."
    )
    device_rate_per_second: float = Field(
        default=10.0, description="Requests per second each device may make on average."
    )
    device_rate_burst: float = Field(
        default=40.0, description="Requests a device may make at once before being limited."
    )
    checkin_interval_seconds: int = Field(
        default=30, description="How often devices are told to check in when not long-polling."
    )
    client_cert_header: str | None = Field(
        default=None,
        description="Mutual TLS behind a TLS-terminating proxy: the request header in which the "
        "proxy forwards the verified client certificate (URL-encoded PEM, e.g. nginx "
        "$ssl_client_escaped_cert). Unset: certificates in headers are ignored.",
    )
    token_ttl_days: int = Field(default=90, description="Default lifetime of new API tokens.")
    online_window_seconds: int = Field(
        default=300, description="A device counts as online when seen within this many seconds."
    )
    indexed_attributes: str = Field(
        default="site",
        description="Comma-separated attribute keys to index on SQLite (PostgreSQL indexes "
        "every attribute for equality).",
    )
    scheduler_interval_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How often the rollout scheduler looks at due deployments; 0 turns it off "
        "in this process (another replica, or a test, drives it).",
    )
    monitor_interval_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How often the health watch is asked whether a round is due (it judges "
        "each device about once a minute, within a CPU budget); 0 turns it off in this process.",
    )
    alert_interval_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How often the alerting engine and the notification deliverer are asked "
        "for work; 0 turns both off in this process (another replica, or a test, drives them).",
    )
    alert_evaluation_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often each alert rule is judged over its scope (rate rules: at most "
        "once a minute). Pending durations and notification timers are kept to the second.",
    )
    telemetry_raw_retention_days: int = Field(
        default=30,
        ge=1,
        description="Raw telemetry points are kept this long; it is also how late a point may "
        "arrive (a device back from a long outage sends what it queued).",
    )
    telemetry_minute_retention_days: int = Field(
        default=90, ge=1, description="1-minute roll-ups (min/max/avg/count) are kept this long."
    )
    telemetry_hour_retention_days: int = Field(
        default=730, ge=1, description="1-hour roll-ups are kept this long."
    )
    require_reason: bool = Field(
        default=False,
        description="Refuse operator changes (update, delete) that carry no reason.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fleetkeeper.db').resolve()}"
