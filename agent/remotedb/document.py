"""The desired `databases` document: `{version, files: [{name, url, sha256, size}]}`.

Checked before anything is fetched; every refusal names the field (`databases.files[1].sha256: ...`)
and never repeats a URL (its query may be a SAS token).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config import MAX_DATABASE_BYTES, database_name_problem, validation_errors
from agent.download import FileSpec, HttpsUrl, Sha256Hex, redact

PROPERTY = "databases"
MAX_FILES = 32


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RemoteFile(_Model):
    name: str = Field(max_length=256, description="The name buses use (e.g. powertrain.dbc).")
    url: HttpsUrl = Field(description="https:// URL of the file (a SAS URL is fine: never reported).")
    sha256: Sha256Hex = Field(description="SHA-256 of the file, 64 lowercase hex digits.")
    size: int = Field(gt=0, le=MAX_DATABASE_BYTES, description="Size of the file in bytes.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        why = database_name_problem(name)
        if why:
            raise ValueError(why)
        return name

    def spec(self) -> FileSpec:
        return FileSpec(self.url, self.sha256, self.size)


class DatabasesDocument(_Model):
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$",
                         description="The version's name (e.g. 2024.06-ecu17), shown in the reported state.")
    files: list[RemoteFile] = Field(min_length=1, max_length=MAX_FILES)

    @model_validator(mode="after")
    def _unique_names(self) -> DatabasesDocument:
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("files: each name once")
        # a version is laid out as a folder of these names: one cannot be a file and another's folder
        clash = next((n for n in names for m in names if m.startswith(n + "/")), None)
        if clash is not None:
            raise ValueError(f"files: {clash} is both a file and the folder of another file")
        return self

    @property
    def key(self) -> str:
        """This version's identity: its name and what its files are (the same name with other files is
        another version). Also its folder's name."""
        digest = hashlib.sha256("\n".join(f"{f.name}\0{f.sha256}\0{f.size}" for f in sorted(
            self.files, key=lambda f: f.name)).encode()).hexdigest()
        return f"{self.version}-{digest[:12]}"

    def redacted(self) -> dict[str, Any]:
        """The document as an ack may repeat it: URLs without their query."""
        return {"version": self.version,
                "files": [{"name": f.name, "url": redact(f.url), "sha256": f.sha256, "size": f.size}
                          for f in self.files]}


def parse_document(value: Any) -> DatabasesDocument:
    """The desired value as a document, or ValueError with `databases.<path>: why` lines joined by '; '."""
    if not isinstance(value, dict):
        raise ValueError(f"{PROPERTY}: expected an object {{version, files: [{{name, url, sha256, size}}]}}")
    try:
        return DatabasesDocument.model_validate(value)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{PROPERTY}.{line}" for line in validation_errors(exc))) from None


def redacted_value(value: Any) -> Any:
    """What an ack may echo of any desired `databases` value: URLs without query, or nothing."""
    try:
        return parse_document(value).redacted()
    except ValueError:
        return None
