"""The page: a prompt form, a streaming route for the page's script, and a
no-JavaScript path that streams the answer as HTML into the page."""

from __future__ import annotations

from collections.abc import Iterator

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    request,
    stream_with_context,
)
from flask_wtf import FlaskForm
from markupsafe import escape
from wtforms import FloatField, IntegerField, SelectChoice, SelectField, TextAreaField
from wtforms.validators import DataRequired, NumberRange, Optional

from webapp import formats
from webapp.api import STREAM_HEADERS, codegen, new_relay
from webapp.config import Config
from webapp.errors import AppError
from webapp.generation import FENCE, Done, Event_, Failed, Relay
from webapp.render import code_block_html, render_answer

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
    prompt = TextAreaField("Describe the code you want", validators=[DataRequired()])
    language = SelectField(
        "Language", choices=[SelectChoice(x, x or "Any") for x in LANGUAGES], default=""
    )
    # Scripts and old pages may omit it: the configured model is the default.
    model = SelectField("Model", validators=[Optional()], validate_choice=False)
    # FloatField, not DecimalField: Decimal("sNaN") makes NumberRange raise.
    temperature = FloatField("Temperature", default=0.2, validators=[Optional(), NumberRange(0, 2)])
    max_tokens = IntegerField("Max tokens", validators=[Optional(), NumberRange(min=1)])


def _config() -> Config:
    config: Config = current_app.config["APP_CONFIG"]
    return config


def _form() -> PromptForm:
    form = PromptForm()
    form.model.choices = [SelectChoice(m) for m in codegen().provider.models]
    if form.max_tokens.data is None and request.method == "GET":
        form.max_tokens.data = min(1024, _config().max_output_tokens)
    return form


# Shown when the model stopped at max_tokens, so a cut answer never looks whole.
CUT_AT_LIMIT = "stopped at the Max tokens limit: raise it and regenerate for the rest"


def _page(**context: object) -> str:
    info = codegen().provider.info()
    return render_template("index.html", provider=info, cut_at_limit=CUT_AT_LIMIT, **context)


@bp.get("/")
def index() -> str:
    return _page(form=_form())


@bp.post("/")
def submit() -> Response | tuple[str, int]:
    """The no-JavaScript path: the answer streams into the page as escaped HTML."""
    form = _form()
    if not form.validate_on_submit():
        return _page(form=form, form_error=_form_error(form)), 400
    try:
        relay = _relay_from_form(form)
        relay.start(commit_after=None)
    except AppError as exc:
        return _page(form=form, form_error=exc.message), exc.status
    head, tail = _page(form=form, streaming=True).split("<!--answer-->", 1)
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
    try:
        yield head.encode()
        yield b'<pre class="raw" id="noscript-answer">'
        for event in relay.events():
            if type(event) is str:
                yield str(escape(event)).encode()
            elif isinstance(event, Failed):
                failure = event.error
            elif isinstance(event, Done):
                cut = event.finish_reason == "length"
    finally:
        # A client gone during the page head never reaches events(): stop here too.
        relay.close()
    yield b"</pre>"
    yield str(
        render_template(
            "answer_tail.html",
            html=render_answer(relay.text()),
            error=failure,
            cut_at_limit=CUT_AT_LIMIT if cut else None,
            timing=relay.timing(),
        )
    ).encode()
    yield tail.encode()


@bp.post("/ui/stream")
def stream() -> Response:
    """NDJSON for the page's script, with highlighted HTML for each closed block."""
    body = request.get_json(silent=True)
    params = codegen().validate(body)
    relay = new_relay(params)
    relay.start(commit_after=_config().heartbeat_interval)
    events = _with_blocks(relay.events(), relay)
    return Response(
        formats.ndjson(events),
        mimetype=formats.NDJSON,
        headers=STREAM_HEADERS,
        direct_passthrough=True,
    )


def _with_blocks(events: Iterator[Event_], relay: Relay) -> Iterator[Event_ | dict[str, object]]:
    """Add a `block` event with highlighted HTML each time a code fence closes."""
    emitted = 0
    for event in events:
        yield event
        if (type(event) is str and "`" in event) or isinstance(event, Done):
            blocks = list(FENCE.finditer(relay.text()))
            closed = (
                blocks
                if isinstance(event, Done)
                else [
                    m for m in blocks if m.group(0).rstrip().endswith("```") and m.end() > m.start()
                ]
            )
            for match in closed[emitted:]:
                yield {
                    "type": "block",
                    "index": emitted,
                    "html": code_block_html(match.group(2).rstrip("\n"), match.group(1)),
                }
                emitted += 1
        if isinstance(event, Done):
            yield {"type": "html", "html": str(render_answer(relay.text()))}


def csrf_failed_page(message: str) -> str:
    """Re-render the form with what the person typed and a fresh token: nothing is lost."""
    return _page(form=_form(), form_error=message)


def _relay_from_form(form: PromptForm) -> Relay:
    temperature = form.temperature.data
    params = codegen().validate(
        {
            k: v
            for k, v in {
                "prompt": form.prompt.data or "",
                "language": form.language.data or None,
                "model": form.model.data or None,
                "temperature": temperature,
                "max_tokens": form.max_tokens.data,
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
        return f"{getattr(form, name).label.text}: {errors[0]}"
    return "Please check the form."
