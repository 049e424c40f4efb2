"""`fleetkeeper artifacts ...`: update payloads, offline signing, and the release keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import RenderableType

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Paging, Reason, reason_header
from fleetkeeper.cli.remote import remote
from fleetkeeper.protocol.keys import (
    KeyFileError,
    generate_key,
    load_key,
    public_key_b64,
    release_key_id,
    save_key,
)
from fleetkeeper.services.release_keys import raw_public_key, sign_artifact

app = typer.Typer(
    help="Artifacts: upload, list, show and delete update payloads; sign them offline.",
    no_args_is_help=True,
)
keys = typer.Typer(
    help="Release keys: the keys whose signatures the fleet trusts.", no_args_is_help=True
)
app.add_typer(keys, name="keys")

PATH = "/api/v1/artifacts"
KEYS_PATH = "/api/v1/release-keys"
COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Version", "version"),
    output.Column("Kind", "kind"),
    output.Column("Models", "models"),
    output.Column("Size", "size"),
    output.Column("Signed by", "signed_by"),
    output.Column("Created", "created_at"),
)
KEY_COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Public key", "public_key", no_wrap=True),
    output.Column("Created", "created_at"),
    output.Column("Revoked", "revoked_at"),
)
_CHUNK = 1024 * 1024

ArtifactId = Annotated[
    str, typer.Argument(metavar="ARTIFACT_ID", help="The artifact's id.", show_default=False)
]
ExistingFile = Annotated[
    Path,
    typer.Argument(metavar="FILE", exists=True, dir_okay=False, readable=True, show_default=False),
]
Version = Annotated[
    str,
    typer.Option(
        "--version", help="Semantic version, e.g. 2.4.0 or 2.4.0-rc.1.", show_default=False
    ),
]
KeyFile = Annotated[
    Path,
    typer.Option(
        "--key",
        exists=True,
        dir_okay=False,
        help="Ed25519 private key file (from `artifacts keygen`).",
        show_default=False,
    ),
]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load(path: Path) -> Ed25519PrivateKey:
    try:
        return load_key(path)
    except KeyFileError as exc:
        output.error(str(exc))
        raise typer.Exit(1) from None


def signed(path: Path, key: Ed25519PrivateKey, version: str) -> dict[str, str]:
    """{sha256, signature, key_id} of the file at `path` as release `version`."""
    digest = file_sha256(path)
    return {
        "sha256": digest,
        "signature": sign_artifact(key, digest, version),
        "key_id": release_key_id(raw_public_key(key)),
    }


def render(artifact: dict[str, Any]) -> RenderableType:
    return output.record(artifact, f"Artifact {artifact.get('name')} {artifact.get('version')}")


@dataclass(frozen=True)
class UploadFields:
    """What `artifacts upload` says about the file."""

    name: Annotated[
        str | None, typer.Option(help="Artifact name (default: the file name without extension).")
    ] = None
    kind: Annotated[str, typer.Option(help="full, package or delta.")] = "full"
    base_version: Annotated[
        str | None, typer.Option(help="A delta's base: the version it applies on top of.")
    ] = None
    hardware_revisions: Annotated[
        str | None,
        typer.Option(metavar="REV,REV", help="Compatible hardware revisions (default: any)."),
    ] = None
    notes: Annotated[str | None, typer.Option("--notes", help="Release notes.")] = None
    reason: Reason = None

    def form(self) -> dict[str, str]:
        return compact(
            {
                "name": self.name,
                "kind": self.kind,
                "base_version": self.base_version,
                "hardware_revisions": self.hardware_revisions,
                "release_notes": self.notes,
                "reason": self.reason,
            }
        )


@app.command("upload")
@remote
def upload(
    api: ApiClient,
    file: ExistingFile,
    version: Version,
    models: Annotated[
        str,
        typer.Option(
            "--models", metavar="MODEL,MODEL", help="Compatible device models.", show_default=False
        ),
    ],
    fields: UploadFields = UploadFields(),
    signature: Annotated[
        str | None,
        typer.Option(
            help="A signature made offline (`artifacts sign`); default: the server signs."
        ),
    ] = None,
    key_id: Annotated[str | None, typer.Option(help="The key that made --signature.")] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            metavar="KEYFILE",
            help="Sign here with this private key (instead of --signature).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Upload an artifact: the file streams to the server, which stores and signs it."""
    if signature and sign_key:
        raise typer.BadParameter(
            "give --signature or --sign-key, not both", param_hint="--sign-key"
        )
    form = {"version": version, "models": models, **fields.form()}
    if sign_key is not None:
        form.update(signed(file, _load(sign_key), version))
    elif signature:
        form.update(compact({"signature": signature, "key_id": key_id}))
    with file.open("rb") as handle:
        created = api.request(
            "POST", PATH, data=form, files={"file": (file.name, handle, "application/octet-stream")}
        )
    output.emit(created, as_json, render)


@app.command("list")
@remote
def list_artifacts(
    api: ApiClient,
    model: Annotated[str | None, typer.Option(help="Only artifacts for this model.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Only this version.")] = None,
    name: Annotated[str | None, typer.Option(help="Only artifacts of this name.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List artifacts, newest first."""
    params = {"model": model, "version": version, "name": name, **paging.params()}
    page = api.page(PATH, params, all_pages=paging.all_pages)
    output.listing(page, as_json, COLUMNS, noun="artifacts")


@app.command("show")
@remote
def show(api: ApiClient, artifact_id: ArtifactId, as_json: Json = False) -> None:
    """Show an artifact."""
    output.emit(api.get(join(PATH, artifact_id)), as_json, render)


@app.command("delete")
@remote
def delete(api: ApiClient, artifact_id: ArtifactId, reason: Reason = None) -> None:
    """Delete an artifact that no deployment refers to."""
    api.delete(join(PATH, artifact_id), {"reason": reason})
    output.note(f"Deleted artifact {artifact_id}.")


@app.command("keygen")
def keygen(
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT", dir_okay=False, help="Where to write the private key."),
    ],
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: Json = False,
) -> None:
    """Make a release key: writes the private key (mode 0600), prints its public half and id."""
    if out.exists() and not force:
        raise typer.BadParameter(f"{out} exists: pass --force to replace it", param_hint="OUT")
    key = generate_key()
    save_key(key, out)
    made = {
        "path": str(out),
        "public_key": public_key_b64(key),
        "key_id": release_key_id(raw_public_key(key)),
    }
    output.emit(made, as_json, lambda k: output.record(k, "Release key"))
    if not as_json:
        output.note(
            f"Keep {out} secret. Trust the key with: "
            f"fleetkeeper artifacts keys add NAME {made['public_key']}"
        )


@app.command("sign")
def sign(file: ExistingFile, key: KeyFile, version: Version, as_json: Json = False) -> None:
    """Sign an artifact offline; prints the signature (--json: sha256, signature, key_id)."""
    made = signed(file, _load(key), version)
    output.emit(made, as_json, lambda s: s["signature"])


# --- release keys ---------------------------------------------------------------------------


@keys.command("list")
@remote
def list_keys(api: ApiClient, as_json: Json = False) -> None:
    """List release keys, the server's own (`server`) and revoked ones too."""
    output.listing(api.get(KEYS_PATH), as_json, KEY_COLUMNS, noun="release keys")


@keys.command("add")
@remote
def add_key(
    api: ApiClient,
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    public_key: Annotated[
        str,
        typer.Argument(
            metavar="PUBKEY", help="base64 Ed25519 public key (from keygen).", show_default=False
        ),
    ],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Trust a release key: uploads signed with it are accepted."""
    body = compact({"name": name, "public_key": public_key, "reason": reason})
    created = api.post(KEYS_PATH, body)
    output.emit(created, as_json, lambda k: output.record(k, f"Release key {k['name']}"))


@keys.command("revoke")
@remote
def revoke_key(
    api: ApiClient,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", show_default=False)],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Revoke a release key: its signatures are no longer accepted."""
    revoked = api.request("DELETE", join(KEYS_PATH, key_id), headers=reason_header(reason))
    output.emit(revoked, as_json, lambda k: output.record(k, f"Release key {k['name']}"))
