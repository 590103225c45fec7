"""weir.install.procs: the small drivers `weir up` runs on (processes, logs, waiting, HTTP)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from weir.install.procs import ProcError, alive, http_get, start_daemon, stop_pid, tail, wait_until
from weir.platform.httpserve import Answer, HttpServer


def test_tail_gives_the_last_lines_or_nothing(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert tail(str(log), 2) == "line 28\nline 29\n"
    assert tail(str(tmp_path / "missing.log")) == ""


def test_a_daemon_runs_detached_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "d.log"
    pid = start_daemon([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], str(log), "")
    try:
        wait_until("the daemon's first line", lambda: "up" in tail(str(log)), 10, pid, str(log))
        assert alive(pid)
    finally:
        stop_pid(pid, grace=5)
    assert not alive(pid)


def test_a_daemon_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    log = tmp_path / "d.log"
    pid = start_daemon([sys.executable, "-c", code], str(log), "")
    wait_until("the daemon's first line", lambda: "up" in tail(str(log)), 10, pid, str(log))
    started = time.monotonic()
    stop_pid(pid, grace=0.5)
    assert not alive(pid)
    assert time.monotonic() - started < 5


def test_wait_until_names_what_and_shows_the_log(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("starting\nno config\n")
    expected = r"(?s)agent: not ready after 0.3s; the end of .*agent.log:\nstarting\nno config"
    with pytest.raises(ProcError, match=expected):
        wait_until("agent", lambda: False, 0.3, log=str(log))
    pid = start_daemon([sys.executable, "-c", "raise SystemExit(3)"], str(log), "")
    with pytest.raises(ProcError, match="agent: the process exited"):
        wait_until("agent", lambda: False, 30, pid, str(log))


def test_http_get_answers_status_and_body_and_none_when_nothing_listens() -> None:
    async def answer(path: str, query: str) -> Answer:
        return Answer(200 if path == "/ready" else 503, f"{path}?{query}\n")

    loop = asyncio.new_event_loop()
    server = HttpServer(answer, "127.0.0.1", 0)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert http_get(f"http://127.0.0.1:{server.port}/ready?x=1") == (200, "/ready?x=1\n")
        assert http_get(f"http://127.0.0.1:{server.port}/other") == (503, "/other?\n")
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert http_get(f"http://127.0.0.1:{server.port}/ready", timeout=1) is None
