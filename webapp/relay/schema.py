"""The request schema: validation and (later) the OpenAPI description share it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from webapp.errors import BadRequest
from webapp.relay.attachments import Attachment, checked


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer, so the API does too; never "5" or true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class AttachedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="The file's name, without folders (e.g. `calc.py`).")
    content: str = Field(description="Its text (UTF-8; MAX_FILE_BYTES at most).")


class GenerateCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Required, except with continue_answer (which carries on the stored prompt).
    prompt: str = Field("", description="What the code should do (required, unless continuing).")
    language: str | None = Field(
        None, max_length=40, description="Programming language the prompt names."
    )
    model: str | None = Field(None, description="One of the server's allowed models.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: Annotated[int, Field(ge=1), BeforeValidator(_integral)] | None = Field(
        None, description="At most MAX_OUTPUT_TOKENS."
    )
    stream: bool = Field(True, description="false: one JSON object at the end.")
    resumable: bool = Field(
        False,
        description="Keep generating for RESUME_GRACE s if the connection drops, so "
        "GET /answers/{id}/events can pick it up where it broke (needs history on).",
    )
    conversation_id: str | None = Field(
        None,
        max_length=32,
        description="A follow-up: the conversation (from `X-Conversation-ID` or "
        "`GET /answers`) whose answers come before this prompt.",
    )
    continue_answer: str | None = Field(
        None,
        max_length=32,
        description="Continue this answer (one that stopped at `max_tokens`): the stream "
        "carries the new text, and the stored answer becomes the whole.",
    )
    files: list[AttachedFile] = Field(
        default_factory=list,
        description="Text files the prompt is about (at most MAX_FILES, each at most "
        "MAX_FILE_BYTES, counted with the prompt against MAX_PROMPT_TOKENS). The `done` "
        "event's `files` gives each changed file's diff. A follow-up keeps the "
        "conversation's files, at their latest version, unless it attaches new ones.",
    )
    _attachments: tuple[Attachment, ...] = PrivateAttr(default=())

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        """`files`, checked (names, sizes, count) by `parse_generate`."""
        return self._attachments


def parse_generate(
    body: Any,
    models: tuple[str, ...],
    max_output_tokens: int,
    *,
    max_files: int = 8,
    max_file_bytes: int = 100_000,
) -> GenerateCodeRequest:
    """Validate a decoded JSON body; every failure is a BadRequest that names the field."""
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_request")
    try:
        params = GenerateCodeRequest.model_validate(body)
    except ValidationError as exc:
        raise _bad_request(exc) from None
    if params.continue_answer is None and not params.prompt.strip():
        if "prompt" not in body:
            raise BadRequest("prompt: this field is required.")
        raise BadRequest("prompt: must not be empty or only whitespace.")
    if params.model is not None and params.model not in models:
        raise BadRequest(
            f"model: {params.model!r} is not allowed here; choose one of {', '.join(models)}.",
            code="model_not_allowed",
        )
    if params.conversation_id is not None and params.continue_answer is not None:
        raise BadRequest("continue_answer: cannot be combined with conversation_id.")
    if params.max_tokens is not None and params.max_tokens > max_output_tokens:
        raise BadRequest(f"max_tokens: must be at most {max_output_tokens}.")
    if params.files:
        if params.continue_answer is not None:
            raise BadRequest(
                "continue_answer: cannot be combined with files (a Continue keeps the "
                "answer's own files)."
            )
        params._attachments = checked(
            params.files, max_files=max_files, max_file_bytes=max_file_bytes
        )
    return params


def _bad_request(exc: ValidationError) -> BadRequest:
    errors = exc.errors(include_url=False)
    unknown = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return BadRequest(f"Unknown fields: {', '.join(unknown)}.", code="unknown_fields")
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "missing":
        return BadRequest(f"{where}: this field is required.")
    return BadRequest(f"{where}: {first['msg']}.")
