"""Every setting, read once from the environment and an optional `.env`.

Only this module reads `os.environ`. Each field's metadata carries its
environment name and its meaning; `settings_table()` renders the table in
docs/configuration.md from the same source, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

PROVIDERS = ("auto", "openai", "local")
LOCAL_MODELS = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m")

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert programmer. Answer with the code first, in fenced "
    "markdown code blocks tagged with their language (```python ... ```), "
    "then a concise explanation of how it works. Keep the code complete and "
    "runnable; do not repeat the question."
)


# The `limits` library's notation, checked here without importing it: gunicorn's
# master reads this module, and must not import network modules before the fork.
_RATE = re.compile(
    r"\d+\s*(?:/|per)\s*(?:\d+\s*)?(?:second|minute|hour|day|month|year)s?", re.IGNORECASE
)

# Settings where 0 means "automatic" or "off".
_ZERO_ALLOWED = frozenset(
    {
        "web_concurrency",
        "local_threads",
        "max_concurrent_streams_per_client",
        "trust_forwarded_for",
        "default_temperature",
        "history_days",
        "history_max_answers",
        "max_files",
        "history_max_file_bytes",
    }
)


class ConfigError(ValueError):
    """A setting has a value the app cannot start with; the message names it."""


def _setting(default: Any, doc: str, *, env: str | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "env": env})


@dataclass(frozen=True)
class Config:
    provider: str = _setting(
        "auto",
        "`openai`, `local` (embedded llama.cpp model) or `auto`: OpenAI-compatible "
        "when `OPENAI_API_KEY` or `OPENAI_BASE_URL` is set, local otherwise.",
    )
    openai_api_key: str = _setting("", "Key for the OpenAI-compatible upstream. Never logged.")
    openai_base_url: str = _setting(
        "",
        "Base URL of any OpenAI-compatible server (OpenAI, vLLM, Ollama `/v1`, "
        "llama.cpp server). Empty means OpenAI's own.",
    )
    upstream_proxy: str = _setting(
        "",
        "HTTP(S) proxy for calls to the model server; unset, `HTTPS_PROXY` / `HTTP_PROXY` "
        "from the environment apply (`NO_PROXY` is honoured).",
    )
    model: str = _setting("gpt-4o-mini", "Default model for the OpenAI-compatible provider.")
    allowed_models: tuple[str, ...] = _setting(
        (), "Comma-separated models a request may choose. Empty means only `MODEL`."
    )
    system_prompt: str = _setting(DEFAULT_SYSTEM_PROMPT, "System prompt override.")
    default_temperature: float = _setting(
        0.0,
        "Temperature sent when a request names none (the page's form starts from it). "
        "0 (greedy) by `make eval`: 72.0% pass@1 against 69.5% at 0.2 (docs/quality.md).",
    )
    repeat_penalty: float = _setting(
        1.0, "The embedded model's repetition penalty (1.0: none). Chosen by `make eval`."
    )
    port: int = _setting(8000, "Port gunicorn listens on (Heroku sets it).")
    web_concurrency: int = _setting(0, "gunicorn workers; 0 means one per core.")
    max_output_tokens: int = _setting(2048, "Upper bound for a request's `max_tokens`.")
    max_prompt_tokens: int = _setting(
        4000,
        "Longest prompt accepted, counted with tiktoken (or the embedded model's tokenizer), "
        "attached files included.",
    )
    max_body_bytes: int = _setting(
        1_048_576, "Largest request body accepted (413 above); attached files travel in it."
    )
    max_files: int = _setting(8, "Files one request may attach (`files`); 0 turns attaching off.")
    max_file_bytes: int = _setting(
        100_000, "Largest attached file, in bytes of UTF-8 text (400 `file_too_large` above)."
    )
    max_answer_chars: int = _setting(
        1_000_000,
        "Hard cap on one answer's text; an answer is also cut at 32 characters per requested "
        "token. Past either, the stream ends with an `answer_too_large` error and the "
        "upstream is closed.",
    )
    connect_timeout: float = _setting(5.0, "Seconds to open a connection to the upstream.")
    first_token_timeout: float = _setting(
        30.0, "Seconds from the request to the first token, retries and queueing included."
    )
    idle_timeout: float = _setting(30.0, "Seconds allowed between two upstream chunks.")
    total_timeout: float = _setting(300.0, "Hard deadline for a whole answer, in seconds.")
    heartbeat_interval: float = _setting(
        10.0,
        "Seconds of silence after which SSE/NDJSON streams get a keep-alive "
        "(and the response starts, to stay under Heroku's 30 s first-byte limit).",
    )
    retry_max_attempts: int = _setting(
        3, "Upstream attempts before the first token (1 = no retry)."
    )
    retry_base_delay: float = _setting(0.5, "First backoff step in seconds; doubles per attempt.")
    retry_max_delay: float = _setting(8.0, "Cap of one backoff wait, in seconds.")
    retry_after_max: float = _setting(
        30.0, "Longest upstream `Retry-After` honoured; longer ones end the retries at once."
    )
    resume_on_failure: bool = _setting(
        False,
        "Resume a stream that breaks mid-way by asking the upstream to continue "
        "the partial answer, within the same deadline.",
    )
    resume_max: int = _setting(2, "Resumptions allowed per answer when `RESUME_ON_FAILURE` is on.")
    local_model: str = _setting(
        "qwen2.5-coder-1.5b", "Embedded model: " + ", ".join(f"`{m}`" for m in LOCAL_MODELS) + "."
    )
    local_model_path: str = _setting("", "Path of any GGUF file to use instead of `LOCAL_MODEL`.")
    local_model_sha256: str = _setting(
        "", "Expected sha256 of `LOCAL_MODEL_PATH`; checked before loading when set."
    )
    model_cache_dir: str = _setting(
        "~/.cache/streaming-codegen", "Where the joined model file is kept."
    )
    local_threads: int = _setting(0, "CPU threads for the local model; 0 means all cores.")
    local_context: int = _setting(4096, "Context window of the local model, in tokens.")
    local_queue_size: int = _setting(8, "Requests that may wait for the local model; more get 503.")
    llama_native: bool = _setting(
        False,
        "Build llama.cpp for exactly this CPU (`make run` / `make test`). Faster on some CPUs, "
        "but it also enables AMX, which segfaults on current Xeons; off: a portable build "
        "chosen from the CPU's flags (AVX-512 without AMX, AVX2, or baseline).",
    )
    local_runtime_fault: str = _setting(
        "", "Tests only: `crash` makes the runtime's start-up probe die with SIGSEGV."
    )
    api_keys: tuple[str, ...] = _setting(
        (),
        "Comma-separated API keys for `/generate-code/` (plain, or `sha256:<hex>` of the key). "
        "Empty: the API is open.",
    )
    api_keys_file: str = _setting(
        "", "File with one API key (or `sha256:<hex>`) per line, added to `API_KEYS`."
    )
    rate_limit: str = _setting(
        "60/minute",
        "Requests per client per window (`N/second|minute|hour|day`); `off` disables it.",
    )
    history_rate_limit: str = _setting(
        "600/minute",
        "Requests per client per window to the history: `/answers…` (not a Stop), the "
        "page's answer, compare, download, share and delete routes, re-attaching, share "
        "links, the page's filter (`/?q=`; not the page itself). Apart from `RATE_LIMIT`; "
        "`off` disables it.",
    )
    answer_lease: float = _setting(
        15.0,
        "Seconds after which a running answer whose instance stopped renewing it (a "
        "crash, a restart, the OOM killer) counts as interrupted: readers anywhere hear "
        "so with the text so far, its row says `interrupted`, and Continue carries it "
        "on. Renewed every 2 s; keep it at 6 or more.",
    )
    stop_rate_limit: str = _setting(
        "300/minute",
        "Stops (`POST /answers/<id>/cancel`) per client per window, apart from the other "
        "limits: far above what stopping real answers needs (each was started under "
        "`RATE_LIMIT`), so it only refuses a flood. `off` disables it.",
    )
    metrics_token: str = _setting(
        "",
        "Bearer token for the scraper of `/metrics`. With it or `API_KEYS` set, `/metrics` "
        "needs `Authorization: Bearer <METRICS_TOKEN or an API key>` (it shows routes, "
        "tokens and spend); with neither, it is open.",
    )
    auth_failure_limit: str = _setting(
        "10/minute",
        "Wrong API keys (API or page sign-in) allowed per address and window; past it, "
        "429 for every attempt from that address until the window ends. `off` disables it.",
    )
    client_read_timeout: float = _setting(
        30.0,
        "Seconds a client has to send a request's head and body, from its first byte; "
        "a slower connection is closed (slow-client attacks hold a worker otherwise).",
    )
    max_concurrent_streams_per_client: int = _setting(
        8, "Answers one client may have in flight at once; 0 disables the bound."
    )
    redis_url: str = _setting(
        "", "Redis for the rate limits, shared by every worker and machine; empty: in memory."
    )
    rate_limit_fail_open: bool = _setting(
        True, "If Redis is unreachable, serve anyway (true) or answer 503 (false)."
    )
    trust_forwarded_for: int = _setting(
        0, "Proxies in front of the app whose `X-Forwarded-For` to trust (Heroku: 1)."
    )
    model_prices: tuple[str, ...] = _setting(
        (),
        "USD per million tokens for a cost estimate, `model=prompt/completion`, "
        "e.g. `gpt-4o-mini=0.15/0.6`.",
    )
    resume_grace: float = _setting(
        15.0,
        "Seconds a resumable answer (the page's, or the API's with `resumable: true`) keeps "
        "generating after its last client left, for one to re-attach; then it is closed.",
    )
    history: bool = _setting(
        True, "Keep every answer (history, follow-ups, share links); `off` stores nothing."
    )
    history_days: int = _setting(
        0, "Delete answers older than this many days (a periodic task); 0 keeps them."
    )
    history_max_answers: int = _setting(
        1000,
        "Answers kept per owner: past it, the oldest are deleted as new ones are written "
        "(none still running); a conversation loses its oldest versions first, and a "
        "follow-up builds on those left. 0 keeps them all.",
    )
    history_max_file_bytes: int = _setting(
        50_000_000,
        "Bytes of attached and answered files kept per owner (each content counted once); "
        "past it, a request that attaches more is a 400 `files_full`. 0: no bound.",
    )
    data_dir: str = _setting(
        "~/.local/share/streaming-codegen",
        "Where the default SQLite history lives (`history.db`); outside the checkout, so a "
        "reinstall keeps it.",
    )
    database_url: str = _setting(
        "",
        "History database: empty for SQLite in `DATA_DIR`, or `postgresql://…` for several "
        "dynos or machines (Heroku Postgres sets it).",
    )
    log_prompts: bool = _setting(False, "Debug only: put prompt text in the logs.")
    secret_key: str = _setting(
        "", "Signs CSRF tokens. Set it when several dynos serve the app; otherwise one is made."
    )
    log_level: str = _setting("INFO", "Python log level.")
    access_log: bool = _setting(
        False,
        "Also write gunicorn's access log (stdout). Off by default: the app already logs one "
        "JSON line per answer, and the access line costs CPU on every request (`make bench`).",
    )

    @property
    def database(self) -> str:
        """DATABASE_URL, or the SQLite file in DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).expanduser() / 'history.db'}"

    @property
    def models(self) -> tuple[str, ...]:
        return self.allowed_models or (self.model,)

    @functools.cached_property
    def prices(self) -> dict[str, tuple[float, float]]:
        """MODEL_PRICES parsed once; read at the end of every answer."""
        table = {}
        for entry in self.model_prices:
            name, _, prices = entry.partition("=")
            prompt_price, completion_price = prices.split("/")
            if not name.strip():
                raise ValueError(entry)
            table[name.strip()] = (float(prompt_price), float(completion_price))
        return table

    @property
    def resolved_provider(self) -> str:
        if self.provider != "auto":
            return self.provider
        return "openai" if (self.openai_api_key or self.openai_base_url) else "local"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, dotenv: str | Path | None = ".env"
    ) -> Config:
        """Build from `environ` (default: `os.environ` over `.env`); raise ConfigError."""
        if environ is None:
            merged: dict[str, str] = {}
            if dotenv is not None and Path(dotenv).is_file():
                from dotenv import dotenv_values

                merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
            merged.update(os.environ)
            environ = merged
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f)
            raw = environ.get(name)
            if raw is None:
                continue
            values[f.name] = _parse(name, raw.strip(), hints[f.name])
        if "upstream_proxy" not in values:
            values["upstream_proxy"] = _standard_proxy(environ, values.get("openai_base_url", ""))
        config = cls(**values)
        config.validate()
        return config

    def replace(self, **changes: Any) -> Config:
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        def fail(f: str, why: str) -> None:
            raise ConfigError(f"{f.upper()}: {why} (got {getattr(self, f)!r})")

        if self.provider not in PROVIDERS:
            fail("provider", f"must be one of {', '.join(PROVIDERS)}")
        if self.local_model not in LOCAL_MODELS and not self.local_model_path:
            fail("local_model", f"must be one of {', '.join(LOCAL_MODELS)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                floor = 0 if f.name in _ZERO_ALLOWED else 1e-9
                if value < floor:
                    fail(f.name, "must be positive" if floor else "must be 0 or more")
        if not 1 <= self.port <= 65535:
            fail("port", "must be a TCP port")
        if self.retry_max_delay < self.retry_base_delay:
            fail("retry_max_delay", "must be at least RETRY_BASE_DELAY")
        if self.answer_lease < 6:
            fail("answer_lease", "must be at least 6 (it is renewed every 2 s)")
        if self.allowed_models and self.model not in self.allowed_models:
            fail("model", "must be one of ALLOWED_MODELS")
        for name in ("rate_limit", "history_rate_limit", "stop_rate_limit", "auth_failure_limit"):
            value = getattr(self, name)
            if value.lower() != "off" and not _RATE.fullmatch(value.strip()):
                fail(name, "must look like 20/minute, or be off")
        try:
            self.prices  # noqa: B018 - parsing is the check
        except ValueError:
            fail("model_prices", "each entry must look like model=0.15/0.6")
        if self.database_url and not self.database_url.startswith(
            ("sqlite:", "postgres://", "postgresql://", "postgresql+psycopg://")
        ):
            fail("database_url", "must be a sqlite:/// or postgresql:// URL")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            fail("log_level", "must be DEBUG, INFO, WARNING or ERROR")


def _standard_proxy(environ: Mapping[str, str], base_url: str) -> str:
    """The proxy the usual variables name for the upstream, as curl and requests read them."""
    from urllib.parse import urlsplit
    from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

    url = urlsplit(base_url or "https://api.openai.com/v1")
    # Keyed as urllib.request.getproxies_environment() keys them: "https", "no", ...
    proxies = {k.lower()[:-6]: v for k, v in environ.items() if k.lower().endswith("_proxy") and v}
    if url.hostname and "no" in proxies and proxy_bypass_environment(url.hostname, proxies):
        return ""
    return proxies.get(url.scheme) or proxies.get("all", "")


def env_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("env") or f.name.upper())


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {raw!r}: {exc}") from None


def settings_table() -> str:
    """The configuration table (docs/configuration.md), rendered from the field metadata."""
    rows = ["| Setting | Default | Meaning |", "| --- | --- | --- |"]
    for f in fields(Config):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        if f.name == "system_prompt":
            default = "(asks for fenced code, then an explanation)"
        shown = f"`{default}`" if default not in ("", ()) else "(empty)"
        rows.append(f"| `{env_name(f)}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)


def update_docs(path: Path) -> None:
    """Rewrite the table between the page's settings markers."""
    text = path.read_text()
    start, end = "<!-- settings -->\n", "<!-- /settings -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{start}{settings_table()}\n{end}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--docs"]:
        update_docs(Path(__file__).resolve().parent.parent / "docs" / "configuration.md")
    else:
        print(settings_table())
