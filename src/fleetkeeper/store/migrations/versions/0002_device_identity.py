"""device identity, provisioning, commands, telemetry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import fleetkeeper.store.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "security_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("serial", sa.String(length=128), nullable=True),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_security_events_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_security_events_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_security_events_kind"), ["kind"], unique=False)

    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "provisioning_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("serial_pattern", sa.String(length=200), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("auto_accept", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", fleetkeeper.store.types.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", fleetkeeper.store.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["device_models.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "commands",
        sa.Column(
            "id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "device_id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column(
            "args",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("delivered_at", fleetkeeper.store.types.UTCDateTime(), nullable=True),
        sa.Column("completed_at", fleetkeeper.store.types.UTCDateTime(), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("output", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.create_index(
            "ix_commands_device_state", ["device_id", "state", "created_at"], unique=False
        )

    op.create_table(
        "device_challenges",
        sa.Column("challenge_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "device_id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("expires_at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("challenge_hash"),
    )
    with op.batch_alter_table("device_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_challenges_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_device_challenges_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "device_logs",
        sa.Column(
            "id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "device_id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("at", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("device_logs", schema=None) as batch_op:
        batch_op.create_index("ix_device_logs_device_at", ["device_id", "at"], unique=False)

    op.create_table(
        "telemetry",
        sa.Column(
            "device_id",
            sa.String(length=36).with_variant(sa.String(length=36, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("ts", fleetkeeper.store.types.UTCDateTime(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "metric", "ts"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_key", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column(
                "credential_generation", sa.Integer(), nullable=False, server_default=sa.text("0")
            )
        )
        batch_op.add_column(
            sa.Column("enrolled_at", fleetkeeper.store.types.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("certificate_serial", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("claim_code_hash", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("claimed_at", fleetkeeper.store.types.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("wipe_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column(
                "replaced_by",
                sa.String(length=36).with_variant(
                    sa.String(length=36, collation="C"), "postgresql"
                ),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "replaces",
                sa.String(length=36).with_variant(
                    sa.String(length=36, collation="C"), "postgresql"
                ),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("replaces")
        batch_op.drop_column("replaced_by")
        batch_op.drop_column("wipe_pending")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("claim_code_hash")
        batch_op.drop_column("certificate_serial")
        batch_op.drop_column("enrolled_at")
        batch_op.drop_column("credential_generation")
        batch_op.drop_column("public_key")

    op.drop_table("telemetry")
    with op.batch_alter_table("device_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_device_logs_device_at")

    op.drop_table("device_logs")
    with op.batch_alter_table("device_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_challenges_expires_at"))
        batch_op.drop_index(batch_op.f("ix_device_challenges_device_id"))

    op.drop_table("device_challenges")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index("ix_commands_device_state")

    op.drop_table("commands")
    op.drop_table("provisioning_tokens")
    op.drop_table("server_secrets")
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_events_kind"))
        batch_op.drop_index(batch_op.f("ix_security_events_device_id"))
        batch_op.drop_index(batch_op.f("ix_security_events_at"))

    op.drop_table("security_events")
