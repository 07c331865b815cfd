"""Local servers for the S3 and distribution tests: moto (S3), redis (Celery broker), Celery workers.

Each listens on a free 127.0.0.1 port, runs in its own process group, and is stopped (SIGTERM, then
SIGKILL) by process group when its context exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterator

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group this test started (start_new_session=True)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s (last error: {last_error!r}):\n{tail(log)}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def close_s3_filesystems() -> None:
    """Close the aiohttp session of every cached s3fs filesystem, then forget them (the next
    moto server is another endpoint). zarr's stores use *asynchronous* s3fs instances, which s3fs
    never closes itself: dropped unclosed, each prints "Unclosed client session" when collected."""
    import s3fs
    from fsspec.asyn import sync
    from zarr.core.sync import sync as zarr_sync  # zarr's event loop: its async instances live there

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if creator is None:  # never connected
            continue
        if fs.asynchronous:
            zarr_sync(creator.__aexit__(None, None, None))
        else:
            sync(fs.loop, creator.__aexit__, None, None, None)
    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """A moto S3 server process; yields its endpoint URL. On exit the s3fs clients are closed
    before the server stops (:func:`close_s3_filesystems`)."""
    import urllib.request

    port = free_port()
    log = log_dir / "moto.log"
    with _process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log) as proc:
        endpoint = f"http://127.0.0.1:{port}"
        _wait(lambda: urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).status == 200,
              proc, "moto_server", log, 30)
        try:
            yield endpoint
        finally:
            close_s3_filesystems()


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[str]:
    """A throwaway redis-server (no persistence); yields its URL."""
    import shutil

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; `make setup` installs it (apt-get install redis-server)")
    port = free_port()
    log = log_dir / "redis.log"
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(log_dir)]
    with _process(args, log) as proc:
        _wait(lambda: redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping(), proc,
              "redis-server", log, 30)
        yield f"redis://127.0.0.1:{port}/0"


class CeleryWorkers:
    """Worker processes started by :func:`celery_workers`."""

    def __init__(self, names: list[str], procs: list[subprocess.Popen], logs: list[Path], broker: str):
        self.names, self.procs, self.logs, self.broker = names, procs, logs, broker

    def wait_ready(self, timeout: float = 180) -> None:
        """Until every worker answers a broadcast ping."""
        from celery import Celery

        app = Celery("rs-embed-ping", broker=self.broker, backend=self.broker)
        try:
            def all_up() -> bool:
                replies = app.control.ping(timeout=1.0) or []
                return set(self.names) <= {host.split("@")[0] for reply in replies for host in reply}

            for name, proc, log in zip(self.names, self.procs, self.logs):
                _wait(all_up, proc, f"celery worker {name}", log, timeout)
        finally:
            app.close()


@contextlib.contextmanager
def celery_workers(names: list[str], config_yaml: Path, env: dict[str, str], log_dir: Path,
                   broker: str, cwd: Path, wait: bool = True,
                   queues: dict[str, list[str]] | None = None) -> Iterator[CeleryWorkers]:
    """``dagster-celery worker start`` once per name, one task at a time each (prefork, concurrency 1).

    ``queues``: the queues each worker listens on (``-q``), by name; default: dagster-celery's
    default queue ``dagster``. ``wait``: return once every worker answers a ping; otherwise call
    ``wait_ready()`` later (tasks sent before then wait in the broker). Whatever the workers share
    (the Dagster instance in ``DAGSTER_HOME``, the stores) must exist before this is entered: the
    workers start at once, and two processes creating one SQLite schema race (alembic "more than
    one head").
    """
    with contextlib.ExitStack() as stack:
        procs, logs = [], []
        for name in names:
            log = log_dir / f"celery-{name}.log"
            args = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                    "-y", str(config_yaml), "-n", name, "-l", "INFO",
                    *(arg for queue in (queues or {}).get(name, []) for arg in ("-q", queue)),
                    "--", "--concurrency", "1", "-O", "fair",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]
            procs.append(stack.enter_context(_process(args, log, env=env, cwd=cwd)))
            logs.append(log)
        workers = CeleryWorkers(names, procs, logs, broker)
        if wait:
            workers.wait_ready()
        yield workers
