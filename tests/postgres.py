"""A throwaway PostgreSQL server for a test run: initdb into a temp dir, start it
on a free port with durability off, yield a SQLAlchemy URL, then stop it and
delete everything. Tests get a real server without touching the system cluster.
Run as root, the server runs as the `postgres` user (PostgreSQL refuses root)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: Debian's highest major, else PATH's."""
    majors = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if re.fullmatch(r"\d+", p.parent.name)
    ]
    for folder in sorted(majors, key=lambda p: int(p.parent.name), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and (Path(pg_ctl).parent / "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yield `postgresql+psycopg://postgres@127.0.0.1:<port>/postgres` for a fresh server."""
    binaries = find_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pytest-pg-"))
    data, log, port = folder / "data", folder / "log", _free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data)]

    def pg(*args: str, check: bool = True) -> None:
        done = subprocess.run(
            [*as_user, *args], cwd=folder, capture_output=True, text=True, timeout=90
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"--- server log tail ---\n{_tail(log)}"
            )

    try:
        if as_user:  # the server refuses to run as root
            shutil.chown(folder, "postgres", "postgres")
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        pg(*initdb, "-E", "UTF8", "--no-locale", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}"
        pg(*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no connection on port {port}: {error}\n{_tail(log)}"
                    ) from error
                time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg(*pg_ctl, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    import psycopg

    with throwaway_postgres() as url:
        port = urlsplit(url).port
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
            row = conn.execute("select version()").fetchone()
            print(url, row[0] if row else None, sep="\n")


if __name__ == "__main__":
    main()
