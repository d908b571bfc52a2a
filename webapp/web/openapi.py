"""The OpenAPI 3.1 description, generated from the models the code validates with.

The request schema is `GenerateCodeRequest` itself, and the response and
event schemas below are what the formatters emit (tests parse real responses
against them), so the description cannot drift from the code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from flask import Blueprint, Response, current_app, render_template
from pydantic import BaseModel, ConfigDict, Field

from webapp.answers.store import FILTER_SCAN
from webapp.config import Config
from webapp.relay.attachments import MAX_NAME_CHARS
from webapp.relay.schema import GenerateCodeRequest

bp = Blueprint("docs", __name__)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CodeBlock(BaseModel):
    language: str = Field(description="The fence's tag; empty when the model gave none.")
    code: str
    file: str | None = Field(
        None,
        description="With attached files: the file this block is a new version of (its "
        "opening line names it, or it is the one block in the one attachment's language).",
    )


class FileChange(BaseModel):
    name: str
    status: Literal["changed", "new"] = Field(
        description="changed: a new version of an attached file; new: a file not attached."
    )
    diff: str | None = Field(
        description="Unified diff (a/NAME, b/NAME; /dev/null for a new file) that "
        "`git apply` accepts; null when it could not be computed (`error` says why)."
    )
    error: str | None = None


class Timing(BaseModel):
    ttft_ms: float = Field(description="Time to first token; -1 when none arrived.")
    duration_ms: float


class Delta(BaseModel):
    type: Literal["delta"] = "delta"
    text: str


class Done(BaseModel):
    type: Literal["done"] = "done"
    finish_reason: str | None
    usage: Usage
    code_blocks: list[CodeBlock]
    request_id: str
    timing: Timing
    cost_usd: float | None = Field(None, description="Estimate, when MODEL_PRICES has the model.")
    files: list[FileChange] = Field(
        description="Per attached file the answer changed (or new file it gave): the diff."
    )


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    code: str = Field(description="Stable code, e.g. idle_timeout, upstream_disconnected.")
    message: str
    retry_after: float | None = None


class Ping(BaseModel):
    type: Literal["ping"] = "ping"


class Answer(BaseModel):
    text: str
    code_blocks: list[CodeBlock]
    explanation: str = Field(description="The text outside the code blocks.")
    model: str
    usage: Usage
    finish_reason: str | None
    request_id: str
    timing: Timing
    files: list[FileChange] = Field(description="As in the `done` event.")


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    retry_after: float | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class StoredAnswer(BaseModel):
    """One stored answer (GET /answers/{id}); the fields of webapp.answers.store.StoredAnswer."""

    id: str
    conversation_id: str
    parent_id: str | None = Field(description="The version this one refined.")
    prompt: str
    language: str | None
    model: str
    temperature: float | None
    max_tokens: int
    text: str
    code_blocks: list[CodeBlock]
    finish_reason: str | None
    outcome: str = Field(description="ok, pending (still streaming), or the error's code.")
    usage: dict[str, int] | None
    cost_usd: float | None
    timing: Timing | None
    shared: bool
    created_at: str
    updated_at: str
    files: list[FileChange] = Field(description="As the `done` event's: the diffs.")
    attachments: list[StoredFileInfo] = Field(description="The files it was given.")
    results: list[StoredFileInfo] = Field(description="The new versions it gave.")


class StoredFileInfo(BaseModel):
    name: str
    role: Literal["attached", "result"]
    size: int = Field(description="Bytes of UTF-8.")
    sha256: str


class AnswerSummary(BaseModel):
    id: str
    conversation_id: str
    parent_id: str | None
    prompt: str
    language: str | None
    model: str
    finish_reason: str | None
    outcome: str
    created_at: str
    chars: int
    shared: bool


class AnswerList(BaseModel):
    answers: list[AnswerSummary] = Field(description="Newest first.")
    next: str | None = Field(
        description="Pass as `before` for the next page; null on the last. It holds the "
        "place of the page's end, so it still works once that answer is gone. With `q`, a "
        f"request reads the next {FILTER_SCAN} answers at most: a page may hold fewer than "
        "`limit` matches, even none, while `next` is not null."
    )


class ShareLink(BaseModel):
    share_id: str
    share_url: str = Field(description="Read-only, no sign-in, noindex; a 404 once revoked.")


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ok"]
    provider: str
    model: str


ERRORS = {
    "400": "Bad input (invalid_json, invalid_request, unknown_fields, model_not_allowed, "
    "prompt_too_long) or the model server refused it (upstream_bad_request).",
    "401": "API_KEYS is set and the key is missing or wrong (unauthorized).",
    "404": "continue_answer or conversation_id names nothing of yours (answer_not_found, "
    "conversation_not_found), or the server keeps no history (history_off).",
    "409": "continue_answer names an answer that did not stop at max_tokens (not_continuable).",
    "413": "Body over MAX_BODY_BYTES (body_too_large).",
    "415": "The body is not sent as application/json (unsupported_media_type).",
    "429": "Over this server's limits (rate_limited, too_many_streams) or the model "
    "server is rate limiting (upstream_rate_limited); see Retry-After.",
    "500": "A bug (internal_error); details only in the server log.",
    "502": "The model server failed or refused the server's key.",
    "503": "The model server is unreachable or the local model is busy.",
    "504": "A time bound passed before the first token.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# What the description says of every route, as data; build_spec adds what the
# settings decide (the models, max_tokens' bound).
_REQUEST_ID: dict[str, Any] = {
    "X-Request-ID": {
        "description": "Echoed, or made for this request.",
        "schema": {"type": "string"},
    }
}
_ERROR: dict[str, Any] = {
    "content": {"application/json": {"schema": _ref("ErrorResponse")}},
    "headers": _REQUEST_ID,
}
_ANSWER_HEADERS = {
    **_REQUEST_ID,
    "X-Answer-ID": {
        "description": "The stored answer (with history on): GET /answers/{id}.",
        "schema": {"type": "string"},
    },
    "X-Conversation-ID": {
        "description": "Its conversation: pass as conversation_id for a follow-up.",
        "schema": {"type": "string"},
    },
    "X-History-Trimmed": {
        "description": "Earlier turns left out to fit MAX_PROMPT_TOKENS (when any).",
        "schema": {"type": "integer"},
    },
}
_GENERATE_RESPONSES: dict[str, Any] = {
    "200": {
        "description": "The answer. The format follows Accept: text/plain (default), "
        "text/event-stream (events delta, done, error), application/x-ndjson (one "
        "Delta/Done/StreamError/Ping per line), or one JSON object with stream=false.",
        "headers": _ANSWER_HEADERS,
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-events": {
                    "delta": _ref("Delta"),
                    "done": _ref("Done"),
                    "error": _ref("StreamError"),
                },
            },
            "application/x-ndjson": {
                "schema": {
                    "oneOf": [_ref("Delta"), _ref("Done"), _ref("StreamError"), _ref("Ping")]
                }
            },
            "application/json": {"schema": _ref("Answer")},
        },
    },
}
for status, description in ERRORS.items():
    _GENERATE_RESPONSES[status] = {**_ERROR, "description": description}
_GENERATE_RESPONSES["429"]["headers"] = {
    **_REQUEST_ID,
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
}


# What the schema can say of a file's name and content. That two names differ it
# cannot say: the server answers 400 file_invalid.
PLAIN_NAME = r"^[^/\\\x00-\x1f\x7f]+$"


def _schemas(
    max_output_tokens: int,
    models: tuple[str, ...],
    max_files: int = 8,
    max_file_bytes: int = 100_000,
) -> dict[str, Any]:
    """The components' schemas, from the models the code validates with; the request's
    with what the settings bound and what pydantic cannot say."""
    components: dict[str, Any] = {}
    for model in (
        GenerateCodeRequest,
        Delta,
        Done,
        StreamError,
        Ping,
        Answer,
        ErrorResponse,
        Health,
        StoredAnswer,
        AnswerList,
        ShareLink,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    request_schema = components["GenerateCodeRequest"]
    request_schema["properties"]["max_tokens"]["anyOf"][0]["maximum"] = max_output_tokens
    request_schema["properties"]["model"]["anyOf"][0]["enum"] = list(models)
    request_schema["properties"]["prompt"]["pattern"] = r"\S"
    del request_schema["properties"]["prompt"]["default"]
    files = request_schema["properties"]["files"]
    files["maxItems"] = max_files
    name = components["AttachedFile"]["properties"]["name"]
    name.update(minLength=1, maxLength=MAX_NAME_CHARS, pattern=PLAIN_NAME)
    name["not"] = {"enum": [".", ".."]}
    content = components["AttachedFile"]["properties"]["content"]
    content.update(maxLength=max_file_bytes, pattern=r"^[^\x00]*$")
    # A prompt, except for a Continue, which carries on the stored one.
    given = {"type": "string"}  # present and not null
    request_schema["anyOf"] = [
        {"required": ["prompt"]},
        {"required": ["continue_answer"], "properties": {"continue_answer": given}},
    ]
    request_schema["not"] = {
        "anyOf": [
            {
                "required": ["conversation_id", "continue_answer"],
                "properties": {"conversation_id": given, "continue_answer": given},
            },
            {  # a Continue keeps its answer's files
                "required": ["continue_answer", "files"],
                "properties": {"continue_answer": given, "files": {"minItems": 1}},
            },
        ]
    }
    return components


@lru_cache(maxsize=4)
def build_spec(
    max_output_tokens: int,
    models: tuple[str, ...],
    max_files: int = 8,
    max_file_bytes: int = 100_000,
) -> dict[str, Any]:
    """The whole description, for these settings (cached: they do not change)."""
    components = _schemas(max_output_tokens, models, max_files, max_file_bytes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Streaming Code Generator",
            "version": "1.0.0",
            "description": "Describe code; get it streamed back with an explanation.",
        },
        "paths": {
            "/generate-code/": {
                "post": {
                    "operationId": "generateCode",
                    "summary": "Generate code and an explanation, streamed",
                    "description": "The body is JSON, or a `multipart/form-data` form with "
                    "the same fields and each attached file as a part named `files` (its "
                    "filename the file's name). A form needs an API key or the same origin "
                    "(browsers send one from another site without asking: 403 "
                    "cross_site_request).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("GenerateCodeRequest")},
                        },
                    },
                    "responses": _GENERATE_RESPONSES,
                }
            },
            **HISTORY_PATHS,
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Provider and model in use; never touches the upstream",
                    "responses": {
                        "200": {
                            "description": "Healthy",
                            "headers": _REQUEST_ID,
                            "content": {"application/json": {"schema": _ref("Health")}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


def _failures(*statuses: str) -> dict[str, Any]:
    described = {
        "400": "Bad query (invalid_request).",
        "401": "API_KEYS is set and the key is missing or wrong (unauthorized).",
        "404": "Nothing of yours has that id (another owner's neither), or HISTORY=off.",
    }
    listed = {status: {**_ERROR, "description": described[status]} for status in statuses}
    # History routes count against HISTORY_RATE_LIMIT (a Stop never is refused).
    listed["429"] = {
        **_ERROR,
        "description": "Over HISTORY_RATE_LIMIT (rate_limited), or too many wrong keys "
        "from this address (too_many_failed_auth); see Retry-After.",
        "headers": {
            **_REQUEST_ID,
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
        },
    }
    return listed


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


_GONE = {"204": {"description": "Done.", "headers": _REQUEST_ID}}
_ANSWER_ID = {"name": "answer_id", "in": "path", "required": True, "schema": {"type": "string"}}
# /answers and friends (webapp/web/history_api.py).
HISTORY_PATHS: dict[str, Any] = {
    "/answers": {
        "get": {
            "operationId": "listAnswers",
            "summary": "Your answers, newest first",
            "parameters": [
                {
                    "name": "q",
                    "in": "query",
                    "description": "Only answers with this text in the prompt or the "
                    "answer (case aside).",
                    "schema": {"type": "string"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                {
                    "name": "before",
                    "in": "query",
                    "description": "The `next` of the page before (or an answer's id).",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {**_ok("AnswerList", "A page"), **_failures("400", "401", "404")},
        }
    },
    "/answers/{answer_id}": {
        "get": {
            "operationId": "getAnswer",
            "summary": "One of your answers",
            "parameters": [_ANSWER_ID],
            "responses": {**_ok("StoredAnswer", "The answer"), **_failures("401", "404")},
        },
        "delete": {
            "operationId": "deleteAnswer",
            "summary": "Delete one of your answers",
            "parameters": [_ANSWER_ID],
            "responses": {**_GONE, **_failures("401", "404")},
        },
    },
    "/answers/{answer_id}/files/{name}": {
        "get": {
            "operationId": "answerFile",
            "summary": "A file of the answer: as it left it (default), or as attached",
            "parameters": [
                _ANSWER_ID,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "version",
                    "in": "query",
                    "schema": {"enum": ["latest", "attached"], "default": "latest"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The file (an attachment download)",
                    "headers": _REQUEST_ID,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_failures("400", "401", "404"),
            },
        },
    },
    "/answers/{answer_id}/changes.patch": {
        "get": {
            "operationId": "answerPatch",
            "summary": "The diffs of the files the answer changed or made, as one patch",
            "description": "`git apply` takes it in the folder of the attached files.",
            "parameters": [_ANSWER_ID],
            "responses": {
                "200": {
                    "description": "The patch (empty when nothing changed)",
                    "headers": _REQUEST_ID,
                    "content": {"text/x-diff": {"schema": {"type": "string"}}},
                },
                **_failures("401", "404"),
            },
        },
    },
    "/answers/{answer_id}/changes.zip": {
        "get": {
            "operationId": "answerChangesZip",
            "summary": "The files the answer changed or made, as they now are, and the patch",
            "parameters": [_ANSWER_ID],
            "responses": {
                "200": {
                    "description": "A zip",
                    "headers": _REQUEST_ID,
                    "content": {
                        "application/zip": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                **_failures("401", "404"),
            },
        },
    },
    "/answers/{answer_id}/share": {
        "post": {
            "operationId": "shareAnswer",
            "summary": "Make (or get) the answer's read-only link",
            "parameters": [_ANSWER_ID],
            "responses": {**_ok("ShareLink", "The link"), **_failures("401", "404")},
        },
        "delete": {
            "operationId": "unshareAnswer",
            "summary": "Revoke the answer's link",
            "parameters": [_ANSWER_ID],
            "responses": {**_GONE, **_failures("401", "404")},
        },
    },
    "/answers/{answer_id}/events": {
        "get": {
            "operationId": "answerEvents",
            "summary": "Re-attach: the events after Last-Event-ID (or ?after=), then live",
            "description": "Event ids are the answer's length in characters once the "
            "event is applied. SSE (default) carries them as `id:`, NDJSON as `seq`. "
            "A finished answer replays and ends.",
            "parameters": [
                _ANSWER_ID,
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**12 - 1},
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The stream (text/event-stream or application/x-ndjson)",
                    "headers": _REQUEST_ID,
                    "content": {
                        "text/event-stream": {"schema": {"type": "string"}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                **_failures("400", "401", "404"),
            },
        }
    },
    "/answers/{answer_id}/cancel": {
        "post": {
            "operationId": "cancelAnswer",
            "summary": "Stop a resumable answer: its upstream closes within a second",
            "parameters": [_ANSWER_ID],
            "responses": {
                "204": {
                    "description": "Stopped, or asked to stop where it runs.",
                    "headers": {
                        **_REQUEST_ID,
                        "X-Stopped-Through": {
                            "description": "How: job (it ran in this worker), row "
                            "(a mark its worker looks for), redis (another "
                            "machine's), ended (it had already ended).",
                            "schema": {
                                "type": "string",
                                "enum": ["job", "row", "redis", "ended"],
                            },
                        },
                    },
                },
                **_failures("401", "404"),
            },
        }
    },
    "/conversations/{conversation_id}": {
        "delete": {
            "operationId": "deleteConversation",
            "summary": "Delete every version in one of your conversations",
            "parameters": [{**_ANSWER_ID, "name": "conversation_id"}],
            "responses": {**_GONE, **_failures("401", "404")},
        }
    },
}


def spec_for(config: Config) -> dict[str, Any]:
    return build_spec(
        config.max_output_tokens,
        current_app.extensions["generation"].provider.models,
        config.max_files,
        config.max_file_bytes,
    )


@bp.get("/openapi.json")
def openapi_json() -> Response:
    import orjson

    return Response(
        orjson.dumps(spec_for(current_app.config["APP_CONFIG"])), mimetype="application/json"
    )


@bp.get("/docs")
def docs() -> str:
    config: Config = current_app.config["APP_CONFIG"]
    spec = spec_for(config)
    request_schema = spec["components"]["schemas"]["GenerateCodeRequest"]
    return render_template(
        "docs.html", spec=spec, request_schema=request_schema, errors=ERRORS, config=config
    )
