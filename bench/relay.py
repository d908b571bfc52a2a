"""Relay benchmark: CPU per relayed token and time to first token added.

    make bench            (python -m bench.relay [--quick] [--json PATH])

Starts the fast fake upstream (bench/upstream.py), the app under gunicorn
exactly as the Procfile does (gunicorn.conf.py), nginx with
`proxy_buffering off` where it is installed, and a bare gevent relay
(bench/floor.py: what gevent itself costs, with no parsing or framework).
The same gevent client drives each target in turn: direct to the upstream
(the baseline), then through each relay. CPU is each server's process tree,
all threads, from /proc schedstat; every figure is measured in this run, on
this machine, and the goals of issue #7 are checked against them at the end.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tree_cpu(pid: int) -> float:
    """Seconds on CPU of every thread in the process tree, from schedstat (ns, not ticks)."""
    total = 0
    for p in tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                total += int(Path(f"/proc/{p}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


COUNTERS = ("user_s", "system_s", "minor_faults", "voluntary_switches", "forced_switches")


def tree_counters(pid: int) -> dict[str, float]:
    """Where a process tree's CPU went, from /proc (all threads of each process):
    user and kernel seconds (clock ticks: read them over seconds of work, not per
    request), minor page faults, and context switches it asked for (waits) and was
    forced into (preemption): whether a difference in CPU is in the kernel's part."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(COUNTERS, 0.0)
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # Switches are counted per thread (live ones only).
            statuses = [
                Path(f"/proc/{p}/task/{task}/status").read_text()
                for task in os.listdir(f"/proc/{p}/task")
            ]
        except OSError:
            continue
        # After the ")": state is field 3 of stat(5), so field n is fields[n - 3].
        totals["minor_faults"] += int(fields[7])
        totals["user_s"] += int(fields[11]) / tick
        totals["system_s"] += int(fields[12]) / tick
        for status in statuses:
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    totals["voluntary_switches"] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    totals["forced_switches"] += int(line.split()[1])
    return totals


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


@dataclass
class Target:
    name: str
    port: int
    path: str
    pid: int | None  # whose CPU counts (None: the upstream itself)
    extra: dict[str, object] = field(default_factory=dict)  # more request fields

    def request(self, tokens: int, rate: float) -> bytes:
        if self.path == "/generate-code/":
            body = json.dumps({"prompt": f"bench rate={rate}", "max_tokens": tokens, **self.extra})
        else:
            body = json.dumps(
                {
                    "model": "bench",
                    "stream": True,
                    "max_tokens": tokens,
                    "messages": [{"role": "user", "content": f"bench rate={rate}"}],
                }
            )
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
        ).encode()


def dechunk(body: bytes) -> bytes:
    out, position = [], 0
    while position < len(body):
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            break
        size = int(body[position:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[line_end + 2 : line_end + 2 + size])
        position = line_end + 2 + size + 2
    return b"".join(out)


def one_stream(target: Target, tokens: int, rate: float) -> tuple[float, float, int]:
    """(time to first token, total time, tokens received) for one streamed answer."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", target.port), 30)
    try:
        sock.sendall(target.request(tokens, rate))
        received: list[bytes] = []
        first = None
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received.append(data)
            if first is None:
                so_far = b"".join(received)
                head_end = so_far.find(b"\r\n\r\n")
                if head_end >= 0 and b"tok" in so_far[head_end:]:
                    first = time.monotonic() - started
            if data.endswith(b"0\r\n\r\n"):
                break
        total = time.monotonic() - started
        # Counted once, on the decoded body: a proxy may split a token across
        # reads and even across chunks.
        raw = b"".join(received)
        seen = dechunk(raw[raw.find(b"\r\n\r\n") + 4 :]).count(b"tok")
        return (first if first is not None else float("nan"), total, seen)
    finally:
        sock.close()


@dataclass
class Result:
    target: str
    scenario: str
    streams: int
    tokens_per_stream: int
    rate: float
    errors: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    cpu_us_per_token: float | None
    rss_per_stream_kib: float | None = None


def run(
    target: Target,
    scenario: str,
    streams: int,
    tokens: int,
    rate: float,
    concurrency: int,
    sample_rss: bool = False,
    stagger: float = 0.0,
) -> Result:
    cpu_before = tree_cpu(target.pid) if target.pid else 0.0
    rss_idle = tree_rss(target.pid) if (target.pid and sample_rss) else 0
    peak = [0]
    results: list[tuple[float, float, int]] = []
    errors = [0]

    def task(_: int) -> None:
        try:
            ttft, total, seen = one_stream(target, tokens, rate)
            if seen != tokens:
                errors[0] += 1
            results.append((ttft, total, seen))
        except OSError:
            errors[0] += 1

    def sampler() -> None:
        while True:
            gevent.sleep(0.25)
            peak[0] = max(peak[0], tree_rss(target.pid))  # type: ignore[arg-type]

    watcher = gevent.spawn(sampler) if (target.pid and sample_rss) else None
    started = time.monotonic()
    if stagger:
        # Steady state: a new stream every `stagger` seconds, so that `concurrency`
        # are open at once, as when many users come and go.
        pool = Pool(concurrency)
        for i in range(streams):
            gevent.sleep(max(0.0, started + i * stagger - time.monotonic()))
            pool.spawn(task, i)
        pool.join()
    else:
        Pool(concurrency).map(task, range(streams))
    wall = time.monotonic() - started
    if watcher:
        watcher.kill()
    cpu = (tree_cpu(target.pid) - cpu_before) if target.pid else None
    ttfts = sorted(r[0] for r in results if r[0] == r[0])
    relayed = sum(r[2] for r in results)

    def pct(q: float) -> float:
        return round(ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000, 2) if ttfts else -1

    return Result(
        target.name,
        scenario,
        streams,
        tokens,
        rate,
        errors[0],
        round(wall, 2),
        pct(0.5),
        pct(0.99),
        round(cpu / relayed * 1e6, 1) if cpu is not None and relayed else None,
        round((peak[0] - rss_idle) / concurrency / 1024, 1) if sample_rss and peak[0] else None,
    )


def start(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# The app exactly as the Procfile serves it.
APP = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]


def app_settings(upstream_port: int) -> dict[str, str]:
    """The app's settings for a benchmark against the fake upstream (history on, in a
    folder of its own), in a gunicorn worker (`app_env`) or in this process."""
    return {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": "bench",
        "LOG_LEVEL": "WARNING",
        "MAX_OUTPUT_TOKENS": "10000",
        "FIRST_TOKEN_TIMEOUT": "60",
        # One client address drives every stream: the per-client limits would
        # refuse most of them, and the relay is what is measured here.
        "RATE_LIMIT": "off",
        "MAX_CONCURRENT_STREAMS_PER_CLIENT": "0",
        "DATA_DIR": tempfile.mkdtemp(prefix="codegen-bench-data-"),
    }


def app_env(
    upstream_port: int, port: int, workers: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a gunicorn serving the app with `app_settings` (`extra`
    overrides, e.g. HISTORY=off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROVIDER"))}
    env.update(app_settings(upstream_port))
    env.update(
        {
            "PORT": str(port),
            # One process per relay, nginx too: the load generator and the upstream
            # need the other core of a 2-core machine (FIELD_NOTES measures so).
            "WEB_CONCURRENCY": str(workers),
            **(extra or {}),
        }
    )
    return env


NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the single-stream figures")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--workers", type=int, default=1, help="processes for the app and for nginx (default 1)"
    )
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    up_port, app_port = free_port(), free_port()
    procs.append(start([sys.executable, "-m", "bench.upstream", str(up_port)]))
    app = start(APP, app_env(up_port, app_port, args.workers))
    procs.append(app)
    # The same app without history: what storing every answer costs the relay.
    plain_port = free_port()
    plain = start(APP, app_env(up_port, plain_port, args.workers, {"HISTORY": "off"}))
    procs.append(plain)
    targets = [Target("direct", up_port, "/v1/chat/completions", None)]
    nginx_dir = tempfile.mkdtemp()
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx:
        ng_port = free_port()
        Path(nginx_dir, "nginx.conf").write_text(
            NGINX_CONF.format(dir=nginx_dir, up=up_port, port=ng_port, workers=args.workers)
        )
        ng = start([nginx, "-c", f"{nginx_dir}/nginx.conf", "-g", "daemon off;"])
        procs.append(ng)
        wait_port(ng_port)
        targets.append(Target("nginx", ng_port, "/v1/chat/completions", ng.pid))
    else:
        print("nginx is not installed: its column is skipped (apt-get install nginx-light)")
    bare_port = free_port()
    bare = start([sys.executable, "-m", "bench.floor", str(bare_port), str(up_port)])
    procs.append(bare)
    wait_port(up_port)
    wait_port(bare_port)
    targets.append(Target("gevent", bare_port, "/generate-code/", bare.pid))
    wait_port(app_port)
    targets.append(Target("app", app_port, "/generate-code/", app.pid))
    wait_port(plain_port)
    targets.append(Target("app-nohist", plain_port, "/generate-code/", plain.pid))

    results: list[Result] = []
    try:
        for t in targets:  # warm up: imports, connection pools, tiktoken
            run(t, "warmup", 20, 50, 0, 10)
        # (name, streams, tokens each, tokens/s, concurrency, sample memory, stagger s)
        scenarios = [
            ("1 stream, 200 tok, fast", 40, 200, 0.0, 1, False, 0.0),
            ("1 stream at 50 tok/s", 6, 100, 50.0, 1, False, 0.0),
        ]
        if not args.quick:
            scenarios += [
                ("100 streams at 50 tok/s", 100, 200, 50.0, 100, False, 0.0),
                ("300 streams at 20 tok/s, all at once", 300, 100, 20.0, 300, False, 0.0),
                # 100 tokens at 20/s last 5 s: one start every 5/300 s keeps 300 open.
                ("300 streams at 20 tok/s, steady", 600, 100, 20.0, 300, False, 5.0 / 300),
                # The length of this app's own answers (median 293 tokens over its
                # HumanEval answers): what history's per-answer cost is spread over
                # in use, against the 100 of the rows above.
                ("300 streams of 300 tok at 20 tok/s", 300, 300, 20.0, 300, False, 0.0),
                ("1000 streams at 5 tok/s", 1000, 25, 5.0, 1000, True, 0.0),
            ]
        for name, streams, tokens, rate, conc, rss, stagger in scenarios:
            for t in targets:
                results.append(
                    run(t, name, streams, tokens, rate, conc, sample_rss=rss, stagger=stagger)
                )
                r = results[-1]
                print(
                    f"  {name:26} {t.name:7} ttft p50 {r.ttft_p50_ms:8.2f} ms  "
                    f"p99 {r.ttft_p99_ms:8.2f} ms  cpu/token {r.cpu_us_per_token} µs  "
                    f"errors {r.errors}",
                    flush=True,
                )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(nginx_dir, ignore_errors=True)

    print_table(results)
    print_goals(results)
    failed = [r for r in results if r.errors]
    if failed:
        print(
            f"\nWARNING: {sum(r.errors for r in failed)} streams failed or lost tokens; "
            "their rows are not valid measurements."
        )
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.json}")
    return 0


def print_table(results: list[Result]) -> None:
    print(
        "\n| scenario | target | errors | TTFT p50 | TTFT p99 | TTFT added p50 / p99 "
        "| CPU per token | vs nginx | memory per stream |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by = {(r.scenario, r.target): r for r in results}
    for r in results:
        direct = by.get((r.scenario, "direct"))
        nginx = by.get((r.scenario, "nginx"))
        added = (
            f"{r.ttft_p50_ms - direct.ttft_p50_ms:+.2f} / "
            f"{r.ttft_p99_ms - direct.ttft_p99_ms:+.2f} ms"
            if direct and r.target != "direct"
            else "baseline"
        )
        ratio = (
            f"{r.cpu_us_per_token / nginx.cpu_us_per_token:.1f}×"
            if nginx and nginx.cpu_us_per_token and r.cpu_us_per_token
            else ""
        )
        bare = by.get((r.scenario, "gevent"))
        if bare and bare.cpu_us_per_token and r.cpu_us_per_token and r.target == "app":
            ratio += f" ({r.cpu_us_per_token / bare.cpu_us_per_token:.1f}× bare gevent)"
        cpu = f"{r.cpu_us_per_token} µs" if r.cpu_us_per_token is not None else "(upstream)"
        mem = f"{r.rss_per_stream_kib} KiB" if r.rss_per_stream_kib is not None else ""
        print(
            f"| {r.scenario} | {r.target} | {r.errors} | {r.ttft_p50_ms} ms | {r.ttft_p99_ms} ms "
            f"| {added} | {cpu} | {ratio} | {mem} |"
        )


def print_goals(results: list[Result]) -> None:
    """Issue #7's goals, judged on this run's figures."""
    by = {(r.scenario, r.target): r for r in results}

    def cpu_ratio(scenario: str) -> float | None:
        app, nginx = by.get((scenario, "app")), by.get((scenario, "nginx"))
        if not (app and nginx and app.cpu_us_per_token and nginx.cpu_us_per_token):
            return None
        return app.cpu_us_per_token / nginx.cpu_us_per_token

    def added(scenario: str, p99: bool = False) -> float | None:
        app, direct = by.get((scenario, "app")), by.get((scenario, "direct"))
        if not (app and direct):
            return None
        if p99:
            return app.ttft_p99_ms - direct.ttft_p99_ms
        return app.ttft_p50_ms - direct.ttft_p50_ms

    def line(goal: str, value: float | None, unit: str, limit: float) -> None:
        if value is None:
            print(f"- {goal}: not measured in this run")
        else:
            verdict = "met" if value <= limit else "NOT met"
            print(f"- {goal}: {value:.2f}{unit} ({verdict})")

    print("\nGoals (issue #7), from this run:")
    for scenario in ("1 stream, 200 tok, fast", "1 stream at 50 tok/s"):
        line(f"CPU per token <= 2x nginx, {scenario}", cpu_ratio(scenario), "x", 2.0)
    for scenario in ("300 streams at 20 tok/s, all at once", "300 streams at 20 tok/s, steady"):
        line(f"CPU per token <= 2x nginx, {scenario}", cpu_ratio(scenario), "x", 2.0)
    for scenario in ("1 stream, 200 tok, fast", "1 stream at 50 tok/s"):
        line(f"TTFT added p50 < 1 ms, {scenario}", added(scenario), " ms", 1.0)
    for scenario in ("300 streams at 20 tok/s, all at once", "300 streams at 20 tok/s, steady"):
        line(f"TTFT added p99 < 20 ms, {scenario}", added(scenario, p99=True), " ms", 20.0)
    print("\nHistory on (app) against off (app-nohist), from this run:")
    for scenario in sorted({r.scenario for r in results if r.target == "app-nohist"}):
        on, off = by.get((scenario, "app")), by.get((scenario, "app-nohist"))
        if on and off and on.cpu_us_per_token and off.cpu_us_per_token:
            print(
                f"- {scenario}: CPU per token {on.cpu_us_per_token} vs "
                f"{off.cpu_us_per_token} µs ({on.cpu_us_per_token / off.cpu_us_per_token:.2f}x), "
                f"TTFT p50 {on.ttft_p50_ms - off.ttft_p50_ms:+.2f} ms, "
                f"p99 {on.ttft_p99_ms - off.ttft_p99_ms:+.2f} ms"
            )
    many = by.get(("1000 streams at 5 tok/s", "app"))
    if many:
        held = "met" if many.errors == 0 else "NOT met"
        print(f"- 1000 open streams with no errors: {many.errors} errors ({held})")
        line("memory per open stream < 64 KiB", many.rss_per_stream_kib, " KiB", 64.0)


if __name__ == "__main__":
    sys.exit(main())
