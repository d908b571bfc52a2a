"""Resumable answers under real gunicorn, against the fault-injecting upstream:
a client that drops and re-attaches gets exactly the rest, on the same worker or
another; an abandoned answer is closed after RESUME_GRACE; Stop closes the
upstream within a second, whoever is attached; 200 clients dropping at random
all end with exactly the whole text."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from sqlalchemy import text

from tests.conftest import TEST_SETTINGS, Redis, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt, wait_idle, worker_pid
from webapp.answers.store import CANCELLING, Store

GRACE = "2"


def whole(tokens: int) -> str:
    return "".join(f"t{i} " for i in range(tokens))


def sse(response: requests.Response) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    """(id, event, data) as they arrive."""
    event_id: int | None = None
    name = ""
    for raw in response.iter_lines():
        line = raw.decode()
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield event_id, name, json.loads(line[6:])
            event_id, name = None, ""


def start(server: Server, session: requests.Session, directive: str) -> requests.Response:
    response = session.post(
        server.url + "/generate-code/",
        json={"prompt": prompt(directive), "resumable": True},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def read(response: requests.Response, deltas: int | None = None) -> tuple[str, int, str | None]:
    """Text, the last event id, and how it ended (None: not yet); stops after `deltas`."""
    text, last, end = "", 0, None
    seen = 0
    for event_id, name, data in sse(response):
        if event_id is not None:
            last = event_id
        if name == "delta":
            text += data["text"]
            seen += 1
            if deltas is not None and seen >= deltas:
                break
        elif name in ("done", "error"):
            end = name if name == "done" else data["code"]
            break
    response.close()
    return text, last, end


def reattach(server: Server, session: requests.Session, answer_id: str, last: int) -> Any:
    return session.get(
        f"{server.url}/answers/{answer_id}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)},
        stream=True,
        timeout=30,
    )


@pytest.fixture()
def resumable(serve: Any, fake: FakeUpstream) -> Server:
    server: Server = serve(RESUME_GRACE=GRACE)
    return server


def test_a_dropped_client_gets_exactly_the_rest(resumable: Server, fake: FakeUpstream) -> None:
    session = requests.Session()
    response = start(resumable, session, "tokens=30 delay=0.03 id=drop")
    answer_id = response.headers["X-Answer-ID"]
    first, last, end = read(response, deltas=5)
    assert end is None and len(first) == last and first == whole(30)[: len(first)]
    time.sleep(0.3)  # the answer goes on without anyone
    rest, _, end = read(reattach(resumable, session, answer_id, last))
    assert end == "done"
    assert first + rest == whole(30)
    # Re-attaching after the end replays from any point, and ends.
    again, _, end = read(reattach(resumable, session, answer_id, 10))
    assert end == "done" and again == whole(30)[10:]
    assert len(fake.records_for("id=drop")) == 1  # one generation, however many readers


def test_ndjson_carries_seq_and_after_works_too(resumable: Server, fake: FakeUpstream) -> None:
    session = requests.Session()
    response = session.post(
        resumable.url + "/generate-code/",
        json={"prompt": prompt("tokens=12 delay=0.02"), "resumable": True},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    )
    events = [json.loads(line) for line in response.text.splitlines()]
    seqs = [e["seq"] for e in events if e["type"] == "delta"]
    assert seqs == sorted(seqs) and seqs[-1] == len(whole(12))
    assert events[-1]["type"] == "done" and events[-1]["seq"] == len(whole(12))
    tail = session.get(
        f"{resumable.url}/answers/{response.headers['X-Answer-ID']}/events?after=6",
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    )
    lines = [json.loads(line) for line in tail.text.splitlines()]
    assert "".join(e["text"] for e in lines if e["type"] == "delta") == whole(12)[6:]


def closed_after_leaving(server: Server, fake: FakeUpstream, directive: str) -> float:
    """Start an answer, read three deltas, leave: seconds until its upstream closed."""
    response = start(server, requests.Session(), directive)
    read(response, deltas=3)
    left = time.monotonic()
    closed = fake.wait_closed(1, timeout=float(GRACE) + 5)
    assert closed and closed[0].how == "client_closed"
    return closed[0].at - left


def test_an_abandoned_answer_is_closed_after_the_grace(
    resumable: Server, fake: FakeUpstream
) -> None:
    waited = closed_after_leaving(resumable, fake, "forever=1 delay=0.05 id=abandon")
    assert float(GRACE) - 0.5 <= waited <= float(GRACE) + 1.0, waited


def test_an_answer_abandoned_while_silent_is_closed_after_the_grace(
    serve: Any, fake: FakeUpstream
) -> None:
    """The model goes quiet and the client leaves meanwhile: its leaving is seen
    within DISCONNECT_CHECK, not at the next keep-alive, and the grace runs from there."""
    server = serve(RESUME_GRACE=GRACE, IDLE_TIMEOUT="30", TOTAL_TIMEOUT="60")
    waited = closed_after_leaving(server, fake, "tokens=50 stall_after=3 id=quiet")
    assert waited <= float(GRACE) + 1.0, waited


def test_a_plain_api_answer_still_stops_when_its_client_leaves(
    resumable: Server, fake: FakeUpstream
) -> None:
    response = requests.post(
        resumable.url + "/generate-code/",
        json={"prompt": prompt("forever=1 delay=0.05 id=plain")},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    )
    read(response, deltas=3)
    left = time.monotonic()
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - left <= 1.0


def test_stop_during_a_reattached_stream_closes_the_upstream(
    resumable: Server, fake: FakeUpstream
) -> None:
    session = requests.Session()
    response = start(resumable, session, "forever=1 delay=0.05 id=stop")
    answer_id = response.headers["X-Answer-ID"]
    _, last, _ = read(response, deltas=3)
    follower = reattach(resumable, session, answer_id, last)
    events = sse(follower)
    next(events)
    asked = time.monotonic()
    assert session.post(f"{resumable.url}/answers/{answer_id}/cancel").status_code == 204
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - asked <= 1.0
    ends = [data for _, name, data in events if name == "error"]
    assert ends and ends[-1]["code"] == "cancelled"
    stored = session.get(f"{resumable.url}/answers/{answer_id}").json()
    assert stored["outcome"] == "cancelled"
    again = session.post(f"{resumable.url}/answers/{answer_id}/cancel")
    assert (again.status_code, again.headers["X-Stopped-Through"]) == (204, "ended")


def test_a_stop_marked_in_the_row_reaches_the_worker_that_runs_the_answer(
    serve: Any, fake: FakeUpstream, tmp_path: Any
) -> None:
    """What a worker that does not run the answer does with its Stop (without Redis):
    it marks the row. The worker that runs it looks every 0.4 s, through the partial
    index, and closes the upstream within a second."""
    server: Server = serve(RESUME_GRACE=GRACE, DATA_DIR=str(tmp_path))
    session = requests.Session()
    response = start(server, session, "forever=1 delay=0.05 id=row")
    answer_id = response.headers["X-Answer-ID"]
    events = sse(response)
    for _ in range(3):
        next(events)  # its row is written by now (within 50 ms of the start)
    store = Store.open(f"sqlite:///{tmp_path}/history.db", migrate=False)
    with store.engine.begin() as connection:
        marked = connection.execute(
            text("UPDATE answers SET outcome = :cancelling WHERE id = :id"),
            {"cancelling": CANCELLING, "id": answer_id},
        )
    store.close()
    asked = time.monotonic()
    assert marked.rowcount == 1
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - asked <= 1.0
    ends = [data for _, name, data in events if name == "error"]
    assert ends and ends[-1]["code"] == "cancelled"
    assert session.get(f"{server.url}/answers/{answer_id}").json()["outcome"] == "cancelled"


@pytest.mark.parametrize("way", ["cancel", "events"])
def test_a_stop_or_reattachment_right_after_the_start_reaches_the_other_worker(
    serve: Any, fake: FakeUpstream, tmp_path: Any, way: str
) -> None:
    """Two workers, no Redis. The worker running an answer writes its row ~50 ms
    after the start (later when busy), and the first token can reach the client
    sooner: a Stop or a re-attachment sent at once, which the other worker gets,
    waits for the row instead of answering 404. The Stop still closes the upstream
    within a second; the re-attached reader gets the whole text."""
    server: Server = serve(
        RESUME_GRACE="5", WEB_CONCURRENCY="2", DATA_DIR=str(tmp_path), HEARTBEAT_INTERVAL="6"
    )
    server.wait_workers(2)
    routes: list[str] = []
    for attempt in range(24):
        fake.reset()
        session = requests.Session()
        directive = f"forever=1 delay=0.05 id=early{way}{attempt}"
        if way == "events":
            directive = f"tokens=30 delay=0.02 id=early{way}{attempt}"
        response = start(server, session, directive)
        answer_id = response.headers["X-Answer-ID"]
        if way == "cancel":
            asked = time.monotonic()
            stop = session.post(f"{server.url}/answers/{answer_id}/cancel", timeout=10)
            assert stop.status_code == 204, (attempt, stop.status_code, stop.text)
            routes.append(stop.headers["X-Stopped-Through"])
            closed = fake.wait_closed(1, timeout=5)
            assert closed and closed[0].at - asked <= 1.0, (attempt, routes[-1])
            response.close()
        else:
            follower = reattach(server, session, answer_id, 0)
            assert follower.status_code == 200, (attempt, follower.status_code, follower.text)
            routes.append(follower.headers["X-Followed-Through"])
            response.close()
            text, _, end = read(follower)
            assert (end, text) == ("done", whole(30)), (attempt, routes[-1])
        if routes[-1] in ("row", "store"):
            break
    # The same worker's way (the job) is what the tests above take.
    assert routes[-1] in ("row", "store"), routes


@pytest.mark.parametrize("directive", ["forever=1 delay=0.05", "tokens=50 stall_after=3"])
def test_stop_while_the_starting_client_still_reads_ends_it_for_everyone(
    serve: Any, fake: FakeUpstream, directive: str
) -> None:
    """The response that started an answer reads its relay itself; a Stop reaches
    it mid-stream and mid-silence, and it and a second reader both get the end."""
    server = serve(RESUME_GRACE=GRACE, IDLE_TIMEOUT="30", TOTAL_TIMEOUT="60")
    session = requests.Session()
    response = start(server, session, f"{directive} id=drivestop")
    answer_id = response.headers["X-Answer-ID"]
    driver = sse(response)
    text = ""
    while "t2 " not in text:
        text += next(driver)[2]["text"]
    watcher = reattach(server, session, answer_id, 0)
    asked = time.monotonic()
    assert session.post(f"{server.url}/answers/{answer_id}/cancel").status_code == 204
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - asked <= 1.0
    for name, data in ((name, data) for _, name, data in driver):
        if name == "delta":
            text += data["text"]
        else:
            assert (name, data["code"]) == ("error", "cancelled")
            break
    else:
        raise AssertionError("the starting client got no end")
    response.close()
    seen, _, end = read(watcher)
    assert end == "cancelled" and seen == text and whole(60).startswith(text)


def test_stop_while_the_starting_client_does_not_read_still_closes_the_upstream(
    serve: Any, fake: FakeUpstream
) -> None:
    """The starting response is stuck in a write (its client reads nothing): a Stop
    lets that client go and closes the upstream, within a second or so."""
    server = serve(RESUME_GRACE=GRACE, MAX_ANSWER_CHARS="100000000", MAX_OUTPUT_TOKENS="1000000")
    session = requests.Session()
    body = {"prompt": prompt("forever=1 delay=0.001 pad=20000 id=stuck"), "resumable": True}
    body["max_tokens"] = 1_000_000
    response = session.post(
        server.url + "/generate-code/",
        json=body,
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    )
    answer_id = response.headers["X-Answer-ID"]
    sent = 0
    while True:  # wait until the socket buffers are full: the server's write blocks
        time.sleep(0.5)
        now = len(fake.records_for("id=stuck")[0].tokens_sent)
        if now == sent:
            break
        sent = now
    asked = time.monotonic()
    assert session.post(f"{server.url}/answers/{answer_id}/cancel").status_code == 204
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - asked <= 1.5, closed[0].at - asked
    response.close()
    outcome = "pending"
    for _ in range(50):  # its end is written a moment later, maybe by the other worker
        outcome = session.get(f"{server.url}/answers/{answer_id}").json()["outcome"]
        if outcome != "pending":
            break
        time.sleep(0.1)
    assert outcome == "cancelled"


def test_a_second_reader_beside_the_starting_one_gets_the_same_text(
    resumable: Server, fake: FakeUpstream
) -> None:
    session = requests.Session()
    response = start(resumable, session, "tokens=40 delay=0.02 id=beside")
    answer_id = response.headers["X-Answer-ID"]
    driver = sse(response)
    first = next(driver)[2]["text"]
    watcher = reattach(resumable, session, answer_id, len(first))
    rest = "".join(data.get("text", "") for _, _, data in driver)
    response.close()
    assert first + rest == whole(40)
    seen, _, end = read(watcher)
    assert end == "done" and first + seen == whole(40)


def test_a_worker_that_exits_ends_its_handed_on_answers(
    upstream: FakeUpstream, fake: FakeUpstream, tmp_path: Any
) -> None:
    """Stopping the server while an answer runs on with nobody attached: its upstream
    is closed and its row says why, instead of staying pending for ever."""
    env = {**TEST_SETTINGS, "OPENAI_BASE_URL": upstream.url, "WEB_CONCURRENCY": "1"}
    env.update({"RESUME_GRACE": "30", "DATA_DIR": str(tmp_path)})
    session = requests.Session()
    first = Server(env)
    try:
        response = start(first, session, "forever=1 delay=0.05 id=exit")
        answer_id = response.headers["X-Answer-ID"]
        text, _, _ = read(response, deltas=3)  # then the client leaves
        time.sleep(0.3)
    finally:
        first.stop()
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].how == "client_closed"
    again = Server(env)  # the same database and key: the same owner's answer
    try:
        stored = session.get(f"{again.url}/answers/{answer_id}").json()
    finally:
        again.stop()
    assert stored["outcome"] == "server_shutdown" and stored["text"].startswith(text)


def test_reattach_is_for_the_owner_only(resumable: Server, fake: FakeUpstream) -> None:
    session = requests.Session()
    answer_id = start(resumable, session, "tokens=3").headers["X-Answer-ID"]
    stranger = requests.Session()
    assert reattach(resumable, stranger, answer_id, 0).status_code == 404
    assert stranger.post(f"{resumable.url}/answers/{answer_id}/cancel").status_code == 404
    bad = session.get(f"{resumable.url}/answers/{answer_id}/events?after=-1")
    assert bad.status_code == 400


@pytest.mark.parametrize("with_redis", [False, True], ids=["database", "redis"])
def test_reattach_through_the_other_worker(
    serve: Any, fake: FakeUpstream, tmp_path: Any, request: pytest.FixtureRequest, with_redis: bool
) -> None:
    """Two workers: a re-attachment lands on either; through the job, or on the other
    worker through Redis (or, without it, the stored row, polled), the client gets
    exactly the rest."""
    settings = {"RESUME_GRACE": "5", "WEB_CONCURRENCY": "2", "DATA_DIR": str(tmp_path)}
    if with_redis:
        settings["REDIS_URL"] = request.getfixturevalue("redis_server").url
    server: Server = serve(**settings)
    other = "redis" if with_redis else "store"
    routes: set[str] = set()
    for attempt in range(12):
        session = requests.Session()
        response = start(server, session, f"tokens=40 delay=0.03 id=two{attempt}")
        answer_id = response.headers["X-Answer-ID"]
        first, last, _ = read(response, deltas=4)
        follower = session.get(
            f"{server.url}/answers/{answer_id}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)},
            stream=True,
            timeout=30,
        )
        routes.add(follower.headers.get("X-Followed-Through", "?"))
        status, route = follower.status_code, follower.headers.get("X-Followed-Through")
        rest, _, end = read(follower)
        assert end == "done" and first + rest == whole(40), (attempt, status, route, first, rest)
        if other in routes:
            break
    # The same worker's way (the job) is what the one-worker tests above take.
    assert other in routes, routes


@pytest.mark.parametrize("with_redis", [False, True], ids=["database", "redis"])
def test_a_reader_on_the_other_worker_keeps_a_long_answer_going_past_its_grace(
    serve: Any, fake: FakeUpstream, tmp_path: Any, request: pytest.FixtureRequest, with_redis: bool
) -> None:
    """The starting client leaves and re-attaches through the other worker, which
    follows the stored row (or Redis), not the job: the worker running the answer
    sees that reader and does not end the answer when its grace (2 s) runs out,
    though the answer runs 5 s."""
    settings = {"RESUME_GRACE": "2", "WEB_CONCURRENCY": "2", "DATA_DIR": str(tmp_path)}
    if with_redis:
        settings["REDIS_URL"] = request.getfixturevalue("redis_server").url
    server: Server = serve(**settings)
    server.wait_workers(2)
    other = "redis" if with_redis else "store"
    routes: list[str] = []
    for attempt in range(16):
        session = requests.Session()
        response = start(server, session, f"tokens=100 delay=0.05 id=long{attempt}")
        answer_id = response.headers["X-Answer-ID"]
        first, last, _ = read(response, deltas=10)
        follower = reattach(server, session, answer_id, last)
        routes.append(follower.headers.get("X-Followed-Through", "?"))
        rest, _, end = read(follower)
        assert (end, first + rest) == ("done", whole(100)), (attempt, routes[-1], end)
        if routes[-1] == other:
            break
    assert routes[-1] == other, routes


@pytest.mark.parametrize("workers", ["1", "2"])
def test_200_clients_dropping_at_random_all_get_the_whole_text(
    serve: Any, fake: FakeUpstream, tmp_path: Any, workers: str
) -> None:
    # 200 answers start at once on a 2-core machine shared with the clients: generous bounds.
    # With two workers a re-attachment lands on either: the job, or the stored row.
    server: Server = serve(
        WEB_CONCURRENCY=workers,
        RESUME_GRACE="10",
        DATA_DIR=str(tmp_path),
        FIRST_TOKEN_TIMEOUT="30",
        IDLE_TIMEOUT="20",
        TOTAL_TIMEOUT="120",
    )
    server.wait_workers(int(workers))
    tokens = 40
    rng = random.Random(7)
    plans = [[rng.randint(1, 12) for _ in range(rng.randint(0, 3))] for _ in range(200)]

    def client(plan: list[int]) -> str:
        session = requests.Session()
        response = start(server, session, f"tokens={tokens} delay=0.02")
        answer_id = response.headers["X-Answer-ID"]
        text, last, end = read(response, deltas=plan[0] if plan else None)
        for drop_after in plan[1:]:
            if end:
                break
            more, last, end = read(reattach(server, session, answer_id, last), deltas=drop_after)
            text += more
        while not end:
            more, last, end = read(reattach(server, session, answer_id, last))
            text += more
        return text if end == "done" else f"ended with {end} after {text!r}"

    with ThreadPoolExecutor(200) as pool:
        texts = list(pool.map(client, plans))
    wrong = [(plan, text) for plan, text in zip(plans, texts, strict=True) if text != whole(tokens)]
    assert wrong == []


@pytest.mark.browser
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_page_picks_an_answer_up_after_a_reload_and_a_network_drop(
    chromium: Any, serve: Any, fake: FakeUpstream, tmp_path: Any, workers: str
) -> None:
    """With two workers the page's re-attachment may land on the other one, which
    follows the answer through its stored row."""
    resumable: Server = serve(RESUME_GRACE=GRACE, WEB_CONCURRENCY=workers, DATA_DIR=str(tmp_path))
    resumable.wait_workers(int(workers))
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(resumable.url + "/")
        page.fill("#prompt", "Count slowly [[fake tokens=60 delay=0.05 id=reload]]")
        page.press("#prompt", "Control+Enter")
        wait_for_text(page, "t10 ")
        assert "answer=" in page.url  # the answer in flight is named in the address
        page.reload()
        wait_idle(page)
        page.wait_for_selector("#saved-link")
        assert page.inner_text("#answer").split() == [f"t{i}" for i in range(60)]
        assert "answer=" not in page.url
        assert len(fake.records_for("id=reload")) == 1  # the reload did not ask again

        # The connection breaks mid-answer: the page reconnects by itself.
        with CuttingProxy(resumable.port) as proxy:
            page.goto(proxy.url + "/")
            page.fill("#prompt", "Count again [[fake tokens=60 delay=0.05 id=cut]]")
            page.press("#prompt", "Control+Enter")
            wait_for_text(page, "t10 ")
            proxy.cut()
            wait_idle(page)
            page.wait_for_selector("#saved-link")
            assert page.inner_text("#answer").split() == [f"t{i}" for i in range(60)]
            assert proxy.cuts == 1 and len(fake.records_for("id=cut")) == 1
    finally:
        context.close()


def wait_for_text(page: Any, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in page.inner_text("#answer"):
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.05)


class CuttingProxy:
    """A TCP proxy in front of the app whose open connections the test can cut (a
    network drop, as the browser sees it); new connections go through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.open.clear()
            self.cuts += 1

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.cut()


# -- across instances, through Redis Streams -------------------------------------------


def test_another_instance_sharing_redis_serves_the_rest_and_the_stop(
    serve: Any, fake: FakeUpstream, redis_server: Redis, tmp_path: Any
) -> None:
    """Two instances (own databases, one Redis): the answer started on one is followed
    from the other, and a Stop sent to the other closes the first's upstream."""
    shared = {"REDIS_URL": redis_server.url, "RESUME_GRACE": "5"}
    first = serve(INSTANCE="a", DATA_DIR=str(tmp_path / "a"), **shared)
    second = serve(INSTANCE="b", DATA_DIR=str(tmp_path / "b"), **shared)
    session = requests.Session()  # one browser: one session cookie for both instances
    response = start(first, session, "tokens=40 delay=0.03 id=redis")
    answer_id = response.headers["X-Answer-ID"]
    begun, last, _ = read(response, deltas=4)
    follower = reattach(second, session, answer_id, last)
    assert follower.headers["X-Followed-Through"] == "redis"
    rest, _, end = read(follower)
    assert end == "done" and begun + rest == whole(40)
    assert reattach(second, requests.Session(), answer_id, 0).status_code == 404  # not yours

    fake.reset()
    response = start(first, session, "forever=1 delay=0.05 id=redis-stop")
    answer_id = response.headers["X-Answer-ID"]
    read(response, deltas=3)
    asked = time.monotonic()
    assert session.post(f"{second.url}/answers/{answer_id}/cancel").status_code == 204
    closed = fake.wait_closed(1, timeout=5)
    assert closed and closed[0].at - asked <= 1.0


def test_a_redis_outage_degrades_to_this_instance(
    serve: Any, fake: FakeUpstream, redis_server: Redis, tmp_path: Any
) -> None:
    server = serve(REDIS_URL=redis_server.url, RESUME_GRACE="5", DATA_DIR=str(tmp_path))
    redis_server.stop()
    session = requests.Session()
    response = start(server, session, "tokens=30 delay=0.03")
    answer_id = response.headers["X-Answer-ID"]
    begun, last, _ = read(response, deltas=4)
    rest, _, end = read(reattach(server, session, answer_id, last))
    assert end == "done" and begun + rest == whole(30)
    health = requests.get(server.url + "/healthz", timeout=5).json()
    assert health["resume_events"].startswith("redis down")
    assert "redis unavailable for resumable answers" in server.logs()


def test_an_instance_that_dies_mid_answer_is_told_as_interrupted_everywhere(
    serve: Any, fake: FakeUpstream, redis_server: Redis, tmp_path: Any
) -> None:
    """Two instances, one Redis and one database; the one running a resumable answer
    is killed (SIGKILL, master and worker). Within its lease a reader through the
    other hears it was interrupted, with the text so far; the row says so, Continue
    carries it on, and the healthy instance does not report Redis down."""
    database = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    shared = {"REDIS_URL": redis_server.url, "DATABASE_URL": database, "ANSWER_LEASE": "6"}
    first = serve(INSTANCE="a", DATA_DIR=str(tmp_path / "a"), **shared)
    second = serve(INSTANCE="b", DATA_DIR=str(tmp_path / "b"), **shared)
    session = requests.Session()
    response = start(first, session, "forever=1 delay=0.05 id=dies")
    answer_id = response.headers["X-Answer-ID"]
    begun, last, _ = read(response, deltas=20)
    time.sleep(2.5)  # a save: the row holds text past what this client read
    worker = worker_pid(first)
    os.kill(first.proc.pid, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    first.proc.wait(5)
    killed = time.monotonic()

    follower = reattach(second, session, answer_id, last)
    assert follower.headers["X-Followed-Through"] == "redis"
    rest, _, end = read(follower)
    heard = time.monotonic() - killed
    assert end == "interrupted", (end, rest)
    assert heard <= 6 + 2 + 3, heard  # the lease, a save's interval, a poll and slack
    stored = session.get(f"{second.url}/answers/{answer_id}", timeout=5).json()
    assert stored["outcome"] == "interrupted"
    # What the reader got is what the upstream sent, from the start, nothing lost or
    # repeated (was `(begun + rest).startswith(begun)`, true of any `rest`).
    sent = "".join(fake.records_for("id=dies")[0].tokens_sent)
    assert sent.startswith(begun + rest) and stored["text"] == begun + rest
    assert len(stored["text"]) > len(begun)  # what was saved past this client's reading
    health = requests.get(second.url + "/healthz", timeout=5).json()
    assert health["resume_events"] == "redis"
    assert "redis unavailable" not in second.logs()
    page = session.get(f"{second.url}/a/{answer_id}", timeout=5).text
    assert "This answer was interrupted" in page and 'id="continue"' in page

    fake.reset()
    carried = session.post(
        second.url + "/generate-code/",
        json={"continue_answer": answer_id, "prompt": ""},
        headers={"Accept": "text/event-stream"},
        timeout=30,
    )
    assert carried.status_code == 200, carried.text
    after = session.get(f"{second.url}/answers/{answer_id}", timeout=5).json()
    # It carried on from the text kept (this answer is endless: it runs to its bound).
    assert after["text"].startswith(stored["text"]) and len(after["text"]) > len(stored["text"])
    assert after["outcome"] != "interrupted"
