"""The page: a prompt form, a streaming route for the page's script, and a
no-JavaScript path that streams the answer as HTML into the page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, generate_csrf
from gevent import Timeout, get_hub
from markupsafe import escape
from werkzeug.wrappers import Response as BaseResponse
from wtforms import (
    FloatField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional

from webapp.answers import exports
from webapp.answers.joblog import Numbered
from webapp.answers.jobs import FOLLOWER_WRITE_STALL
from webapp.answers.starting import Started
from webapp.answers.store import now
from webapp.config import Config
from webapp.errors import AppError, BadRequest, ClientTooSlow
from webapp.relay import formats
from webapp.relay.codeblocks import FENCE
from webapp.relay.events import PING, Done, Failed, Ping, RelayEvent, close_source
from webapp.relay.generation import Relay
from webapp.web.access import GENERATE, HISTORY_PAGE, is_public, needs, public
from webapp.web.history_api import events_after, follow_counted
from webapp.web.render import code_block_html, render_answer
from webapp.web.responses import error_response, wants_json_response
from webapp.web.service import (
    STREAM_HEADERS,
    answer_of,
    detach,
    generation,
    guard,
    new_relay,
    owner,
    read_json_body,
    recorder,
    run_detached,
    store,
    uploaded_files,
)
from webapp.web.signins import session_key

bp = Blueprint("ui", __name__)

LANGUAGES = [
    "",
    "Python",
    "JavaScript",
    "TypeScript",
    "Go",
    "Rust",
    "Java",
    "C",
    "C++",
    "C#",
    "Ruby",
    "PHP",
    "Kotlin",
    "Swift",
    "Bash",
    "SQL",
    "HTML",
    "CSS",
]


class PromptForm(FlaskForm):  # type: ignore[misc]
    # Required unless the form continues a stored answer (see `submit`).
    prompt = TextAreaField("Describe the code you want")
    language = SelectField(
        "Language", choices=[SelectChoice(x, x or "Any") for x in LANGUAGES], default=""
    )
    # Scripts and old pages may omit it: the configured model is the default.
    model = SelectField("Model", validators=[Optional()], validate_choice=False)
    # Ranges are the API schema's to check, so the page says what the API says.
    # FloatField, not DecimalField: Decimal("sNaN") cannot be compared.
    temperature = FloatField("Temperature", default=0.2, validators=[Optional()])
    max_tokens = IntegerField("Max tokens", validators=[Optional()])
    # A follow-up in this conversation ("Refine this"), or a Continue of this answer.
    conversation_id = HiddenField(validators=[Optional(), Length(max=32)])
    continue_answer = HiddenField(validators=[Optional(), Length(max=32)])

    def validate_prompt(self, field: TextAreaField) -> None:
        if not (field.data or "").strip() and not self.continue_answer.data:
            raise ValueError("Please describe the code you want.")


def _config() -> Config:
    config: Config = current_app.config["APP_CONFIG"]
    return config


# Prompts to try, offered under an empty form: each is a link (`/?example=N` fills the
# form without JavaScript; the script fills it in place).
EXAMPLES = (
    "A Python function that checks whether a string is a palindrome, with tests",
    "A Go HTTP server that answers /healthz with JSON",
    "A SQL query for the 5 customers with the highest total order value",
    "A Bash script that renames every .jpeg file in a folder to .jpg",
)


def prompt_form() -> PromptForm:
    form = PromptForm()
    form.model.choices = [SelectChoice(m) for m in generation().provider.models]
    if request.method == "GET":
        if form.max_tokens.data is None:
            form.max_tokens.data = min(1024, _config().max_output_tokens)
        form.temperature.data = _config().default_temperature
        example = request.args.get("example", "")
        if example in {str(n) for n in range(len(EXAMPLES))} and not form.prompt.data:
            form.prompt.data = EXAMPLES[int(example)]
    return form


@lru_cache(maxsize=8)
def _installed(static: str) -> tuple[str | None, bool]:
    """What `make` copied from npm into static/ (looked up once: a restart sees a change):
    Pyodide's versioned folder, and whether markdown-it is there."""
    versions = sorted(p.parent.name for p in Path(static).glob("pyodide/*/pyodide.asm.wasm"))
    markdown = (Path(static) / "vendor" / "markdown-it.min.js").is_file()
    return (f"pyodide/{versions[-1]}/" if versions else None), markdown


def pyodide_url() -> str | None:
    """Where the Run button's Pyodide is served, by version (so it is cached for good), or
    None where it is not installed (no npm when `make` ran): the page offers no Run."""
    folder, _ = _installed(current_app.static_folder or "")
    return url_for("static", filename=folder) if folder else None


def markdown_script() -> str | None:
    """markdown-it for the page's streaming prose, where installed (else plain text until
    the answer ends, when the server's HTML replaces it)."""
    _, markdown = _installed(current_app.static_folder or "")
    return url_for("static", filename="vendor/markdown-it.min.js") if markdown else None


# The page's words for an answer's outcome (history.py stores the codes).
OUTCOME_WORDS = {
    "client_disconnected": "the page was closed before it ended",
    "client_too_slow": "the page could not keep up",
    "cancelled": "stopped",
    "cancelling": "stopping",
    "interrupted": "interrupted: the server stopped",
    "first_token_timeout": "the model did not start in time",
    "idle_timeout": "the model went silent",
    "deadline_exceeded": "it took too long",
    "upstream_disconnected": "the model broke off",
    "upstream_unreachable": "the model could not be reached",
    "upstream_unavailable": "the model was unavailable",
    "upstream_rate_limited": "the model was rate limited",
    "upstream_auth": "the model's API key was refused",
    "local_model_busy": "the local model was busy",
    "local_model_invalid": "the local model could not be loaded",
    "upstream_error": "the model server failed",
    "upstream_timeout": "the model server timed out",
    "upstream_bad_request": "the model server refused the request",
}


@bp.app_template_filter("size")
def size_words(count: int) -> str:
    """A file's size as the page says it (static/attachments.js says it the same way)."""
    if count < 1000:
        return f"{count} byte{'' if count == 1 else 's'}"
    kilo = count / 1000
    return f"{kilo:.1f} KB".replace(".0 ", " ") if kilo < 10 else f"{round(kilo):,} KB"


@bp.app_template_filter("diff_lines")
def diff_lines(diff: str) -> list[tuple[str, str]]:
    """A unified diff's lines, each with its colour's class (the compare page's: `file`,
    `hunk`, `add`, `del`, `same`); the template escapes the text."""
    return [(line.kind, line.text) for line in exports.tagged_lines(diff)]


@bp.app_template_filter("outcome")
def outcome_words(code: str) -> str:
    """An answer's outcome in words: a code the page has no words for reads as a failure."""
    return OUTCOME_WORDS.get(code, "it failed")


# Shown when the model stopped at max_tokens, so a cut answer never looks whole.
CUT_AT_LIMIT = "stopped at the Max tokens limit: raise it and regenerate for the rest"
# With history on the answer is stored, so Continue can carry it on.
CUT_CONTINUE = "stopped at the Max tokens limit: Continue carries it on"


_FIELD_NAMED = re.compile(r"^(\w+): (.*)$", re.DOTALL)
# An attached file's problem names the file (`files[0] 'x.bin': ...`): the page says it by name.
_FILE_NAMED = re.compile(r"^files\[\d+\] (['\"])(.*?)\1: (.*)$", re.DOTALL)
_FIELDS = ("prompt", "language", "model", "temperature", "max_tokens", "files")
_SUBJECTS = {
    "prompt": "The prompt",
    "language": "Language",
    "model": "Model",
    "temperature": "Temperature",
    "max_tokens": "Max tokens",
    "files": "Attached files",
}
# The API's (pydantic's, WTForms') wording of a field's problem, as the page says it.
_WORDING = (
    (re.compile(r"Input should be less than or equal to (\S+?)\.?$"), "must be at most {0}."),
    (re.compile(r"Input should be greater than or equal to (\S+?)\.?$"), "must be at least {0}."),
    (
        re.compile(r"Input should be a valid integer.*|Not a valid integer.*"),
        "must be a whole number.",
    ),
    (re.compile(r"Input should be a valid number.*|Not a valid float.*"), "must be a number."),
    (
        re.compile(r"String should have at most (\d+) characters?\.?$"),
        "must be at most {0} characters.",
    ),
    (
        re.compile(r"(\d+) tokens is over the limit of (\d+)\.?$"),
        "is {0} tokens, over the limit of {1}: shorten it.",
    ),
    (re.compile(r"this field is required\.?$"), "is required."),
    (re.compile(r"(must .*)$", re.DOTALL), "{0}"),
)


def readable(message: str) -> tuple[str | None, str]:
    """The form's field that an API message names (`temperature: Input should be ...`), and
    the message in words a person reads ("Temperature must be at most 2.")."""
    file = _FILE_NAMED.match(message)
    if file is not None:
        _, name, problem = file.groups()
        return "files", f"The file “{name}”: {problem}"
    named = _FIELD_NAMED.match(message)
    if named is None or named.group(1) not in _FIELDS:
        return None, message
    field, problem = named.groups()
    subject = _SUBJECTS[field]
    for pattern, words in _WORDING:
        found = pattern.fullmatch(problem)
        if found:
            return field, f"{subject} {words.format(*found.groups())}"
    return field, f"{subject}: {problem}"


def page(template: str, **context: Any) -> str:
    """A page of the site: the header's model and sign-out, and the form's error state."""
    info = generation().provider.info()
    signed = bool(guard().key_digests)
    config = _config()
    # The field an error names is marked invalid and focused, as the script does.
    named, context["form_error"] = readable(str(context.get("form_error") or ""))
    invalid = context.pop("invalid_field", None) or named

    def field_state(name: str) -> dict[str, Any]:
        if name != invalid or name not in _FIELDS:
            return {}
        state: dict[str, Any] = {"aria-invalid": "true", "aria-describedby": "error"}
        if name != "prompt":  # the prompt box takes its autofocus from the template
            state["autofocus"] = True
        return state

    return render_template(
        template,
        provider=info,
        cut_at_limit=CUT_AT_LIMIT,
        cut_continue=CUT_CONTINUE,
        can_sign_out=signed,
        field_state=field_state,
        invalid_field=invalid if invalid in _FIELDS else None,
        request_id=g.get("request_id", ""),
        # The form's bounds, which its inputs and the script's size counter show.
        max_prompt_tokens=config.max_prompt_tokens,
        max_body_bytes=config.max_body_bytes,
        max_output_tokens=config.max_output_tokens,
        max_files=config.max_files,
        max_file_bytes=config.max_file_bytes,
        pyodide=pyodide_url(),
        markdown_script=markdown_script(),
        **context,
    )


class SignInForm(FlaskForm):  # type: ignore[misc]
    key = PasswordField("API key", validators=[DataRequired()])


def signed_in() -> bool:
    """With API_KEYS set, the page is for key holders: has this session signed in?"""
    limits = guard()
    return not limits.key_digests or session_key(limits) is not None


@bp.before_request
def require_sign_in() -> BaseResponse | None:
    # Generating routes check the key in the app's before_request (401); the
    # page itself sends a signed-out visitor to the sign-in form.
    if request.method == "GET" and not is_public() and not signed_in():
        return redirect(url_for("ui.signin"))
    return None


@bp.route("/signin", methods=["GET", "POST"])
@public
def signin() -> BaseResponse | tuple[str, int]:
    """A key, once, for a signed session cookie; wrong keys count against the address."""
    limits = guard()
    if not limits.key_digests:
        return redirect(url_for("ui.index"))
    form = SignInForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return _signin_page(form, _form_error(form) if status == 400 else None), status
    key_id = limits.check_key(form.key.data or "", request.remote_addr or "")
    if key_id is None:
        return _signin_page(form, "That key is not valid."), 401
    session.clear()  # a fresh session: nothing from before the sign-in carries over
    session["key_id"] = key_id
    session["sign_in"] = current_app.extensions["sign_ins"].open(key_id)
    return redirect(url_for("ui.index"), code=303)


@bp.post("/signout")
def signout() -> BaseResponse:
    """Ends the sign-in itself, not only this copy of the cookie (webapp/web/signins.py)."""
    sign_in = session.pop("sign_in", None)
    session.pop("key_id", None)
    if isinstance(sign_in, str) and "sign_ins" in current_app.extensions:
        current_app.extensions["sign_ins"].close(sign_in)
    return redirect(url_for("ui.signin"), code=303)


def _signin_page(form: SignInForm, error: str | None) -> str:
    return render_template("signin.html", form=form, form_error=error)


HISTORY_LIST = 20


def recent_answers(query: str | None = None, here: str | None = None) -> dict[str, Any]:
    """The list beside the form, as the templates take it: the owner's answers
    (`history`, None: HISTORY=off), newest first after `?before=`, filtered by `query`
    (else `?q=`), the cursor of the older ones (`older`, None on the last page), and the
    page it is listed on (`history_here`: the page a filter lists again)."""
    history = recorder()
    if here is None:
        here = request.path if request.method == "GET" else url_for("ui.index")
    before = request.args.get("before") or None
    if query is None:
        query = request.args.get("q", "")
    else:
        before = None  # a new filter lists from the newest
    query = query.strip()[:200]
    if history is None:
        return {"history": None, "query": query, "older": None, "history_here": here}
    found, older = history.store.page(owner(), query=query, limit=HISTORY_LIST, before=before)
    return {"history": found, "query": query, "older": older, "history_here": here}


@bp.get("/")
@needs(HISTORY_PAGE, only_if=lambda: request.args.get("q", "").strip())
def index() -> str:
    form = prompt_form()
    resumed = request.args.get("answer", "")[:32]
    if resumed and recorder() is not None:
        _fill_from_answer(form, resumed)
    return page("index.html", form=form, examples=EXAMPLES, **recent_answers())


def _fill_from_answer(form: PromptForm, answer_id: str) -> None:
    """A reload while an answer is written (`?answer=<id>`, which the script follows
    again): the form as it was sent, so Regenerate has the prompt and settings."""
    try:
        sent = answer_of(answer_id)
    except AppError:
        return  # not the owner's (or gone): the empty form
    form.prompt.data = sent.prompt
    form.language.data = sent.language or ""
    if sent.model in generation().provider.models:
        form.model.data = sent.model
    if sent.temperature is not None:
        form.temperature.data = sent.temperature
    form.max_tokens.data = sent.max_tokens


@bp.post("/")
@needs(GENERATE)
def submit() -> Response | tuple[str, int]:
    """The no-JavaScript path: the answer streams into the page as escaped HTML."""
    form = prompt_form()
    if not form.validate_on_submit():
        invalid = next(iter(form.errors), None)
        return page(
            "index.html", form=form, form_error=_form_error(form), invalid_field=invalid
        ), 400
    try:
        relay = _relay_from_form(form)
        relay.start(commit_after=None)
    except AppError as exc:
        return page("index.html", form=form, form_error=exc.message), exc.status
    head, tail = page("index.html", form=form, streaming=True, **recent_answers()).split(
        "<!--answer-->", 1
    )
    return Response(
        # The closing part renders a template, so it needs the request context.
        stream_with_context(_html_stream(head, tail, relay)),
        mimetype="text/html",
        headers=STREAM_HEADERS,
        direct_passthrough=True,
    )


def _html_stream(head: str, tail: str, relay: Relay) -> Iterator[bytes]:
    failure: AppError | None = None
    cut = False
    changes: list[dict[str, Any]] = []
    # A Continue shows the stored text first; the new text follows it.
    answer: Started = g.answer
    prefix, recorded = answer.continued_text, answer.recorded
    try:
        yield head.encode()
        yield b'<pre class="raw" id="noscript-answer">'
        if prefix:
            yield str(escape(prefix)).encode()
        for event in relay.events():
            if type(event) is str:
                yield str(escape(event)).encode()
            elif isinstance(event, Failed):
                failure = event.error
            elif isinstance(event, Done):
                cut = event.finish_reason == "length"
                changes = event.files
    finally:
        # A client gone during the page head never reaches events(): stop here too.
        relay.close()
    yield b"</pre>"
    yield str(
        render_template(
            "answer_tail.html",
            html=get_hub().threadpool.apply(render_answer, (prefix + relay.text(),)),
            error=failure,
            cut_at_limit=(CUT_CONTINUE if recorded else CUT_AT_LIMIT) if cut else None,
            timing=relay.timing(),
            answer_id=recorded.answer_id if recorded else None,
            max_tokens=relay.request.max_tokens,
            trimmed=answer.trimmed,
            changes=changes,
        )
    ).encode()
    yield tail.encode()


@bp.post("/ui/stream")
@needs(GENERATE)
def stream() -> Response:
    """NDJSON for the page's script, with highlighted HTML for each closed block."""
    # orjson, as the API: deep nesting is a 400, never a RecursionError.
    try:
        params = generation().validate(read_json_body())
        relay = new_relay(params)
    except BadRequest as exc:
        # In the page's words, with the field it names, which the script marks.
        field, message = readable(exc.message)
        if field is None:
            raise
        return error_response(BadRequest(message, code=exc.code), field=field)
    resumable = detach(relay)  # the page's answers survive a reload or a dropped connection
    heartbeat = _config().heartbeat_interval
    # A resumable answer's response starts within PAGE_COMMIT, first token or not: the
    # page learns its id (X-Answer-ID) and puts it in the address, so a reload before
    # the first token finds it.
    relay.start(commit_after=min(PAGE_COMMIT, heartbeat) if resumable else heartbeat)
    prefix = g.answer.continued_text
    if resumable:
        job = run_detached(relay)
        events, text = _at_once(formats.numbered(job.driven(), job.start)), job.text
    else:
        events, text = formats.numbered(relay.events(), len(prefix)), lambda: prefix + relay.text()
    return _page_stream(events, text)


# Seconds a page's resumable answer may wait for its first token before its response
# starts (with a keep-alive): refusals that come at once keep their HTTP status.
PAGE_COMMIT = 0.25


def _at_once(events: Iterator[Numbered]) -> Iterator[Numbered]:
    """A keep-alive first: the server sends the response's head with the first bytes."""
    try:
        yield -1, PING
        yield from events
    finally:
        close_source(events)


def _page_stream(events: Iterator[Numbered], text: Callable[[], str]) -> Response:
    return Response(
        formats.ndjson_numbered(_with_blocks(events, text)),
        mimetype=formats.NDJSON,
        headers=STREAM_HEADERS,
        direct_passthrough=True,
    )


@bp.get("/ui/answers/<answer_id>/events")
@needs(HISTORY_PAGE)
def reattach(answer_id: str) -> Response:
    """The page picks an answer up again (a reload, a dropped connection): the
    events after `?after=` characters, then the live ones, as /ui/stream sends them."""
    return follow_counted(answer_id, events_after(), lambda f: _page_stream(f.events, f.text))


# How far back a page that was reloaded before it learnt its answer's id looks for it.
STARTED_WITHIN = 120.0


@bp.get("/ui/answers/started")
@needs(HISTORY_PAGE)
def started_answers() -> Response:
    """The owner's answers begun in the last `?within=` seconds (newest first, a few at
    most): the page reloaded before its answer's id reached it finds that answer here
    by its prompt (static/app.js), and follows it."""
    raw = request.args.get("within", "10")
    try:
        within = min(max(float(raw), 0.0), STARTED_WITHIN)
    except ValueError:
        raise BadRequest("within: must be a number of seconds.") from None
    found, _ = store().page(owner(), limit=5)  # this worker's queued rows first
    since = now() - timedelta(seconds=within)
    recent = [{"id": a.id, "prompt": a.prompt} for a in found if a.created_at >= since]
    return Response(orjson.dumps({"answers": recent}), mimetype="application/json")


def _with_blocks(
    events: Iterator[Numbered], answer_text: Callable[[], str]
) -> Iterator[tuple[int, RelayEvent | Ping | dict[str, object]]]:
    """Add a `block` event with highlighted HTML each time a code fence closes.

    A block counts once its closing fence arrived (an opening fence alone is
    not a block), or at the end. The search starts after the last block sent,
    so a long answer is not scanned again on every backtick. Highlighting runs
    in a native thread: the event loop keeps serving the other streams.
    """
    emitted = 0
    searched_from = 0
    pool = get_hub().threadpool
    last_writes: Timeout | None = None
    try:
        for end, event in events:
            done = isinstance(event, Done)
            if done or isinstance(event, Failed):
                # The answer ends (recorded, its stream slot freed) before its client
                # hears so, and before the highlighting below lets other requests run:
                # a follow-up sent at once then builds on the whole answer. The bound
                # the relay kept on its last write goes with it: the end, the blocks
                # and the page's HTML get one of their own, so the stream still ends.
                close_source(events)
                last_writes = Timeout(FOLLOWER_WRITE_STALL, ClientTooSlow("client_too_slow"))
                last_writes.start()
            yield end, event
            if (type(event) is str and "`" in event) or done:
                text = answer_text()
                for match in FENCE.finditer(text, searched_from):
                    if match.group(3) is None and not done:
                        break  # still open: wait for its closing fence
                    code, language = match.group(2).rstrip("\n"), match.group(1)
                    html = pool.apply(code_block_html, (code, language))
                    yield -1, {"type": "block", "index": emitted, "html": html}
                    emitted += 1
                    searched_from = match.end()
            if done:
                html = str(pool.apply(render_answer, (answer_text(),)))
                yield -1, {"type": "html", "html": html}
    finally:
        if last_writes is not None:
            last_writes.close()


@bp.app_errorhandler(CSRFError)
def on_csrf_error(exc: CSRFError) -> Response | tuple[str, int]:
    """A stale token: JSON callers get a fresh one to retry with; the form is
    shown again with what the person typed and a fresh token, so nothing is lost."""
    err = BadRequest(
        "Your session expired or the page was open too long. A fresh token is in "
        "place: submit again.",
        code="csrf_invalid",
    )
    if wants_json_response():
        return error_response(err, csrf_token=generate_csrf())
    return page("index.html", form=prompt_form(), form_error=err.message), 400


def _relay_from_form(form: PromptForm) -> Relay:
    temperature = form.temperature.data
    params = generation().validate(
        {
            k: v
            for k, v in {
                "prompt": form.prompt.data or "",
                "language": form.language.data or None,
                "model": form.model.data or None,
                "temperature": temperature,
                "max_tokens": form.max_tokens.data,
                "conversation_id": form.conversation_id.data or None,
                "continue_answer": form.continue_answer.data or None,
                "files": uploaded_files() or None,
            }.items()
            if v is not None
        },
    )
    return new_relay(params)


def _form_error(form: PromptForm) -> str:
    if form.errors.get("csrf_token"):
        return (
            "Your session expired or the form was stale. "
            "The form has a fresh token now: submit again."
        )
    for name, errors in form.errors.items():
        if name == "prompt":
            return str(errors[0])
        return f"{name}: {errors[0]}"  # page() puts it in words
    return "Please check the form."
