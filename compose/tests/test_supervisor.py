"""Restart-with-backoff and stop behaviour of mesh.supervisor, with tiny fake children."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from mesh.supervisor import Backoff, ChildSpec, Supervisor
from mesh.testhelpers import pid_alive

CRASH = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', 'SIGTERM', flush=True); time.sleep(60)",
]


def spec(name: str, argv: list[str], tmp_path: Path) -> ChildSpec:
    return ChildSpec(name, lambda: list(argv), tmp_path / f"{name}.log")


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, factor=2.0, cap=0.2, reset_after=30.0)


def run_for(sup: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.tick()
        time.sleep(0.01)


def test_backoff_doubles_up_to_the_cap() -> None:
    """Delays go 0.5, 1, 2, 4, 8, then stay at the 10 s cap."""
    b = Backoff()
    assert [b.next_delay(1.0) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_backoff_resets_after_a_long_run() -> None:
    """A process that stayed up 30 s restarts after the initial delay again."""
    b = Backoff()
    for _ in range(4):
        b.next_delay(0.1)
    assert b.next_delay(30.0) == 0.5
    assert b.next_delay(0.1) == 1.0


def test_crashing_child_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    """A child that keeps exiting is restarted again and again, delays doubling to the cap."""
    lines: list[str] = []
    sup = Supervisor([spec("crasher", CRASH, tmp_path)], lines.append, backoff=fast_backoff)
    sup.start()
    run_for(sup, 1.5)
    child = sup["crasher"]
    assert child.starts >= 4
    assert child.delays[:4] == [0.05, 0.1, 0.2, 0.2]
    assert any("crasher exited unexpectedly (code 3)" in line for line in lines)
    assert any(line.strip() == "crasher | boom" for line in lines)  # the console tail
    log = (tmp_path / "crasher.log").read_text()
    assert log.count("mesh: starting crasher") == child.starts
    sup.stop_all(timeout=2)


def test_sleeper_is_left_alone_and_stopped_on_request(tmp_path: Path) -> None:
    """A child that keeps running is not restarted, and stop_all ends it by SIGTERM."""
    lines: list[str] = []
    sup = Supervisor([spec("sleeper", SLEEP, tmp_path)], lines.append, backoff=fast_backoff)
    sup.start()
    run_for(sup, 0.5)
    child = sup["sleeper"]
    pid = child.pid
    assert pid is not None
    assert child.starts == 1
    assert child.ready  # no port or URL: alive means ready
    sup.stop_all(timeout=5)
    assert not pid_alive(pid)
    assert child.popen is not None
    assert child.popen.returncode == -15


def test_killed_child_is_restarted_on_the_same_spec(tmp_path: Path) -> None:
    """A child killed from outside comes back with a new pid."""
    import os
    import signal

    sup = Supervisor([spec("sleeper", SLEEP, tmp_path)], lambda _: None, backoff=fast_backoff)
    sup.start()
    first = sup["sleeper"].pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while sup["sleeper"].starts < 2 and time.monotonic() < deadline:
        sup.tick()
        time.sleep(0.01)
    second = sup["sleeper"].pid
    assert second is not None
    assert second != first
    assert sup["sleeper"].delays == [0.05]
    sup.stop_all(timeout=5)
    assert not pid_alive(second)


def test_child_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    """stop_all escalates to SIGKILL when SIGTERM is ignored."""
    lines: list[str] = []
    sup = Supervisor([spec("stubborn", STUBBORN, tmp_path)], lines.append, backoff=fast_backoff)
    sup.start()
    deadline = time.monotonic() + 5
    while "ignoring SIGTERM\n" not in (tmp_path / "stubborn.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = sup["stubborn"].pid
    assert pid is not None
    started = time.monotonic()
    sup.stop_all(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert not pid_alive(pid)
    assert any("did not stop" in line for line in lines)


def test_services_are_stopped_before_servers(tmp_path: Path) -> None:
    """stop_all ends every service before any server."""
    lines: list[str] = []
    specs = [
        spec("server", SLEEP, tmp_path),
        ChildSpec("service", lambda: list(SLEEP), tmp_path / "service.log", kind="service"),
    ]
    sup = Supervisor(specs, lines.append, backoff=fast_backoff)
    sup.start()
    sup.stop_all(timeout=5)
    stopped = [line.split()[0] for line in lines if line.endswith(" stopped")]
    assert stopped == ["service", "server"]


def test_spawn_failure_is_retried(tmp_path: Path) -> None:
    """A child whose binary is missing is reported and retried with backoff."""
    lines: list[str] = []
    missing = spec("ghost", [str(tmp_path / "no-such-binary")], tmp_path)
    sup = Supervisor([missing], lines.append, backoff=fast_backoff)
    sup.start()
    run_for(sup, 0.3)
    assert sup["ghost"].crashes >= 2
    assert any("ghost: could not start" in line for line in lines)
    sup.stop_all(timeout=1)


@pytest.mark.parametrize("url_ok", [True, False])
def test_readiness_uses_the_url(tmp_path: Path, url_ok: bool) -> None:
    """A child with a readiness URL is ready only when the URL answers 200."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if url_ok else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/readyz"
        child_spec = ChildSpec("web", lambda: list(SLEEP), tmp_path / "web.log", ready_url=url)
        sup = Supervisor([child_spec], lambda _: None, backoff=fast_backoff, probe_interval=0.05)
        sup.start()
        run_for(sup, 0.5)
        assert sup["web"].ready is url_ok
        sup.stop_all(timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_second_signal_hurries_the_stop(tmp_path: Path) -> None:
    """With `hurry` set, a child ignoring SIGTERM is killed without waiting for the timeout."""
    import threading

    sup = Supervisor([spec("stubborn", STUBBORN, tmp_path)], lambda _: None, backoff=fast_backoff)
    sup.start()
    deadline = time.monotonic() + 5
    while "ignoring SIGTERM\n" not in (tmp_path / "stubborn.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    hurry = threading.Event()
    threading.Timer(0.3, hurry.set).start()
    started = time.monotonic()
    sup.stop_all(timeout=30, hurry=hurry)
    assert time.monotonic() - started < 5


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """If the supervisor itself is SIGKILLed, its children get SIGTERM (no orphan keeps a port)."""
    import os
    import signal
    import subprocess

    script = (
        "import sys, time; from pathlib import Path; from mesh.supervisor import *\n"
        "argv = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        f"s = Supervisor([ChildSpec('c', lambda: argv, Path({str(tmp_path)!r}) / 'c.log')], "
        "print)\n"
        "s.start(); print('PID', s['c'].pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = 0
    for line in parent.stdout:
        if line.startswith("PID "):
            pid = int(line.split()[1])
            break
    assert pid
    assert pid_alive(pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(5)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


THREADED = [
    sys.executable,
    "-c",
    "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
    "print('two', 'threads', flush=True); time.sleep(60)",
]


def policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of a process."""
    import os

    return {os.sched_getscheduler(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_children_run_under_batch_scheduling_unless_told(tmp_path: Path) -> None:
    """Every thread of a supervised child runs under SCHED_BATCH (why: mesh.servers
    .batch_scheduling); with CHAT_SCHED_BATCH=0 in its environment, the default policy."""
    import os

    specs = [
        spec("batch", THREADED, tmp_path),
        ChildSpec(
            "plain", lambda: list(THREADED), tmp_path / "plain.log", {"CHAT_SCHED_BATCH": "0"}
        ),
    ]
    sup = Supervisor(specs, lambda _: None, backoff=fast_backoff)
    sup.start()
    try:
        for name in ("batch", "plain"):
            deadline = time.monotonic() + 10
            while "two threads" not in (tmp_path / f"{name}.log").read_text():
                assert time.monotonic() < deadline, f"{name} did not start its thread"
                time.sleep(0.05)
        batch, plain = sup["batch"].pid, sup["plain"].pid
        assert batch is not None
        assert plain is not None
        assert len(list(Path(f"/proc/{batch}/task").iterdir())) == 2
        assert policies(batch) == {os.SCHED_BATCH}
        assert policies(plain) == {os.SCHED_OTHER}
    finally:
        sup.stop_all(timeout=5)
