"""Metrics (Prometheus) and the one log line per answer.

Under gunicorn, `gunicorn.conf.py` sets PROMETHEUS_MULTIPROC_DIR before any
worker starts, so every worker writes its samples there and /metrics adds
them up: the figures are right whichever worker answers the scrape. Nothing
here runs per chunk: counters move once per request, answer or retry.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from webapp.errors import Unauthorized
from webapp.relay.generation import RelayHooks
from webapp.web.access import GENERATE, need_of_request
from webapp.web.guard import Guard
from webapp.web.keys import bearer_token

if TYPE_CHECKING:
    from webapp.relay.generation import Answer

log = logging.getLogger("webapp")
bp = Blueprint("metrics", __name__)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "codegen_requests_total", "HTTP requests by route and status", ["route", "status"]
)
ANSWERS = Counter("codegen_answers_total", "Answers by outcome", ["model", "outcome"])
TTFT = Histogram("codegen_ttft_seconds", "Time to first token", ["model"], buckets=_BUCKETS)
DURATION = Histogram(
    "codegen_answer_duration_seconds", "Whole answer duration", ["model"], buckets=_BUCKETS
)
TOKENS = Counter("codegen_tokens_total", "Tokens by kind", ["model", "kind"])
ATTEMPTS = Counter("codegen_upstream_attempts_total", "Upstream requests made", ["model"])
RETRIES = Counter("codegen_upstream_retries_total", "Retries by reason", ["reason"])
ACTIVE = Gauge("codegen_active_streams", "Answers in flight", multiprocess_mode="livesum")
REJECTED = Counter("codegen_rate_limit_rejections_total", "Requests refused by a limit", ["kind"])
HISTORY_FAILURES = Counter(
    "codegen_history_write_failures_total", "History writes that failed", ["operation"]
)
COST = Counter("codegen_cost_usd_total", "Estimated spend (MODEL_PRICES)", ["model"])


_CHILDREN: dict[tuple[object, ...], Any] = {}


def labelled(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: the label sets are few (models,
    outcomes, routes), and `labels()` costs as much again as the update itself."""
    key = (metric, *labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


class Observer(RelayHooks):
    """Relay hooks that keep the metrics and write the per-answer log line."""

    def __init__(self, log_prompts: bool = False) -> None:
        self.log_prompts = log_prompts

    def started(self, relay: Answer) -> None:
        ACTIVE.inc()

    def retried(self, relay: Answer, reason: str) -> None:
        labelled(RETRIES, reason).inc()

    def finished(self, relay: Answer) -> None:
        model = relay.request.model
        timing = relay.timing()
        if relay.started:
            ACTIVE.dec()
        labelled(ANSWERS, model, relay.outcome).inc()
        labelled(ATTEMPTS, model).inc(relay.attempts)
        labelled(DURATION, model).observe(timing["duration_ms"] / 1000)
        if timing["ttft_ms"] >= 0:
            labelled(TTFT, model).observe(timing["ttft_ms"] / 1000)
        usage = relay.usage
        if usage:
            labelled(TOKENS, model, "prompt").inc(usage.get("prompt_tokens", 0))
            labelled(TOKENS, model, "completion").inc(usage.get("completion_tokens", 0))
        if relay.cost_usd:
            labelled(COST, model).inc(relay.cost_usd)
        fields = {
            "request_id": relay.request_id,
            "client": relay.client,
            "model": model,
            "status": relay.http_status,
            "outcome": relay.outcome,
            "attempts": relay.attempts,
            "resumes": relay.resumes,
            "tokens": (usage or {}).get("completion_tokens"),
            **timing,
        }
        if self.log_prompts:
            fields["prompt"] = relay.request.messages[-1]["content"]
        log.info("answer", extra={"fields": fields})


def record_rejection(kind: str) -> None:
    labelled(REJECTED, kind).inc()


def record_history_failure(operation: str) -> None:
    HISTORY_FAILURES.labels(operation).inc()


def scraper_may_read(headers: Any) -> None:
    """/metrics shows routes, tokens and spend: with METRICS_TOKEN or API_KEYS set it
    needs a bearer token, METRICS_TOKEN or an API key (wrong ones count as failures)."""
    guard: Guard = current_app.extensions["guard"]
    token = current_app.config["APP_CONFIG"].metrics_token
    if not token and not guard.key_digests:
        return
    presented = bearer_token(headers) or ""
    if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return
    # Anything else presented counts as a wrong key (AUTH_FAILURE_LIMIT) unless it is one.
    if presented and guard.check_key(presented, request.remote_addr or "") is not None:
        return
    raise Unauthorized(
        "The metrics need Authorization: Bearer <METRICS_TOKEN or an API key>.",
        code="metrics_token_required",
    )


def init_app(app: Flask) -> None:
    @app.after_request
    def count_request(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        labelled(REQUESTS, rule, str(response.status_code)).inc()
        return response

    @app.after_request
    def log_request(response: Response) -> Response:
        if response.status_code >= 400 and need_of_request() == GENERATE:
            log.info(
                "refused",
                extra={
                    "fields": {
                        "request_id": g.get("request_id"),
                        "client": g.get("client_id"),
                        "route": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.monotonic() - g.get("started", 0)) * 1000, 1),
                    }
                },
            )
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics() -> Response:
    scraper_may_read(request.headers)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(
        body,
        mimetype=CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )
