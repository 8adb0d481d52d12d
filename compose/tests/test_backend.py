"""Which servers the test fixtures use: env > testcontainers (Docker reachable) > local."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh import testing
from mesh.testing import choose_backend, docker_endpoints, docker_reachable

ALL_URLS = {
    testing.TEST_ENV_NATS: "nats://127.0.0.1:1",
    testing.TEST_ENV_REDIS: "redis://127.0.0.1:2/0",
    testing.TEST_ENV_DYNAMO: "http://127.0.0.1:3",
}


def test_env_urls_win_over_docker() -> None:
    """All three CHAT_TEST_*_URL set: those servers, even when Docker is reachable."""
    assert choose_backend(ALL_URLS, docker=True) == "env"
    assert choose_backend(ALL_URLS, docker=False) == "env"


def test_partial_env_urls_are_ignored() -> None:
    """Two of three URLs are not enough: the next rule decides."""
    partial = dict(ALL_URLS)
    del partial[testing.TEST_ENV_DYNAMO]
    assert choose_backend(partial, docker=True) == "testcontainers"
    assert choose_backend(partial, docker=False) == "local"


def test_docker_then_local() -> None:
    """Without URLs: testcontainers when Docker answers, else local processes."""
    assert choose_backend({}, docker=True) == "testcontainers"
    assert choose_backend({}, docker=False) == "local"


def test_forced_backend_and_bad_value() -> None:
    """CHAT_TEST_BACKEND forces a backend; an unknown one is a clear error."""
    assert choose_backend({"CHAT_TEST_BACKEND": "local", **ALL_URLS}, docker=True) == "local"
    assert choose_backend({"CHAT_TEST_BACKEND": "Testcontainers"}, docker=False) == (
        "testcontainers"
    )
    with pytest.raises(ValueError, match="CHAT_TEST_BACKEND"):
        choose_backend({"CHAT_TEST_BACKEND": "k8s"}, docker=False)


def test_docker_endpoints_prefer_docker_host(tmp_path: Path) -> None:
    """DOCKER_HOST alone when set; else system, rootless and Desktop sockets."""
    assert docker_endpoints({"DOCKER_HOST": "tcp://10.0.0.1:2375"}, tmp_path) == [
        "tcp://10.0.0.1:2375"
    ]
    found = docker_endpoints({"XDG_RUNTIME_DIR": "/run/user/1000"}, tmp_path)
    assert found[0] == "unix:///var/run/docker.sock"
    assert "unix:///run/user/1000/docker.sock" in found
    assert f"unix://{tmp_path}/.docker/run/docker.sock" in found


def _serve(server: socket.socket, answer: bytes) -> None:
    with server:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(answer)


@pytest.fixture
def fake_unix_engine() -> Iterator[Path]:
    """A UNIX socket answering Docker's /_ping with OK (a short path: sun_path is limited)."""
    folder = Path(tempfile.mkdtemp(prefix="dk"))
    path = folder / "d.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    thread = threading.Thread(target=_serve, args=(server, b"HTTP/1.0 200 OK\r\n\r\nOK"))
    thread.start()
    try:
        yield path
    finally:
        thread.join(5)
        path.unlink(missing_ok=True)
        folder.rmdir()


def test_docker_reachable_over_a_unix_socket(fake_unix_engine: Path, tmp_path: Path) -> None:
    """An engine answering on DOCKER_HOST=unix://... is reachable."""
    assert docker_reachable({"DOCKER_HOST": f"unix://{fake_unix_engine}"}, tmp_path)


def test_docker_reachable_over_tcp(tmp_path: Path) -> None:
    """An engine answering on DOCKER_HOST=tcp://127.0.0.1:<port> is reachable."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    thread = threading.Thread(target=_serve, args=(server, b"HTTP/1.0 200 OK\r\n\r\nOK"))
    thread.start()
    try:
        assert docker_reachable({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}, tmp_path)
    finally:
        thread.join(5)


def test_docker_unreachable(tmp_path: Path) -> None:
    """No socket file, a refused port, or a non-Docker answer: not reachable."""
    assert not docker_reachable({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}, tmp_path)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert not docker_reachable({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}, tmp_path)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    thread = threading.Thread(target=_serve, args=(server, b"HTTP/1.0 404 Not Found\r\n\r\n"))
    thread.start()
    try:
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        assert not docker_reachable({"DOCKER_HOST": address}, tmp_path)
    finally:
        thread.join(5)


def test_the_infra_fixture_uses_the_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session fixture asks choose_backend with the real environment and Docker probe."""
    seen: list[tuple[bool, str]] = []
    monkeypatch.setattr(testing, "docker_reachable", lambda: True)
    monkeypatch.setenv("CHAT_TEST_BACKEND", "local")
    original = testing.choose_backend

    def spy(env: dict[str, str], docker: bool) -> str:
        result = original(env, docker)
        seen.append((docker, result))
        return result

    monkeypatch.setattr(testing, "choose_backend", spy)
    backend = testing.choose_backend(dict(testing.os.environ), testing.docker_reachable())
    assert backend == "local"
    assert seen == [(True, "local")]


def test_testcontainers_modules_exist() -> None:
    """The testcontainers path uses the library's real modules, names and parameters
    (checked by signature: building a container needs a Docker engine)."""
    import inspect

    from testcontainers.community.nats import NatsContainer
    from testcontainers.community.redis import RedisContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    assert "jetstream" in inspect.signature(NatsContainer.__init__).parameters
    assert callable(NatsContainer.nats_uri)
    assert "image" in inspect.signature(RedisContainer.__init__).parameters
    for name in ("with_command", "with_exposed_ports", "waiting_for", "get_exposed_port"):
        assert callable(getattr(DockerContainer, name)), name
    strategy = LogMessageWaitStrategy("CorsParams").with_startup_timeout(60)
    assert isinstance(strategy, LogMessageWaitStrategy)
