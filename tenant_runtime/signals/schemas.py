"""The signals page's forms (pydantic, ``extra="forbid"``: an unknown field is refused with a
sentence naming it). Numbers arrive as text and are parsed by the handlers, so a malformed one
gets a sentence, not a validation dump."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


class SourceForm(_Form):
    name: str = Field(max_length=200)
    kind: str = Field(max_length=30)


class EmptyForm(_Form):
    pass


class ExtractionForm(_Form):
    """The master switch: ``extraction`` is "on" or "off"."""

    extraction: str = Field(max_length=10)


class UploadForm(_Form):
    """An export file, streamed from Starlette's spooled upload (never read whole into memory):
    ``upload_fields`` tells the form reader to hand the file over as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    upload_fields: ClassVar[tuple[str, ...]] = ("signals_file",)

    source_id: str = Field(default="", max_length=20)
    team: str = Field(default="", max_length=200)
    file_format: str = Field(default="", max_length=10)
    signals_file: UploadFile | str = ""  # "" when no file was chosen
