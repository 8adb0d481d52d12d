"""What can be checked of compose/docker-compose.yml without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from history_service.settings import Settings as HistorySettings
from infra.settings import CommonSettings
from mesh import lb
from rooms_service.settings import Settings as RoomsSettings
from users_service.settings import Settings as UsersSettings
from ws_edge.settings import Settings as EdgeSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
LIGHT = COMPOSE_DIR / "docker-compose.light.yml"

# CHAT_SERVICE_NAME in compose -> the settings class that process reads
SETTINGS: dict[str, type[BaseSettings]] = {
    "users": UsersSettings,
    "rooms": RoomsSettings,
    "history": HistorySettings,
    "ws-edge": EdgeSettings,
    "provision": CommonSettings,
}
# the Dockerfile of each service and the module it runs
DOCKERFILES = {
    "users": ("services/users/Dockerfile", "users_service"),
    "rooms": ("services/rooms/Dockerfile", "rooms_service"),
    "history": ("services/history/Dockerfile", "history_service"),
    "ws-edge": ("services/ws-edge/Dockerfile", "ws_edge"),
}
JOBS = {"provision"}  # one-shot: no healthcheck, restart on failure only
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?])?([^}]*)\}")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _load(COMPOSE)["services"]
    return services


def _app_services() -> dict[str, dict[str, Any]]:
    """Services that run our images (they set CHAT_SERVICE_NAME)."""
    return {
        name: svc
        for name, svc in _services().items()
        if "CHAT_SERVICE_NAME" in (svc.get("environment") or {})
    }


def _interpolate(value: str) -> str:
    """docker compose's `${VAR:-default}` / `${VAR:?error}` with nothing set in the shell."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name == "CHAT_JWT_SECRET":
            return "s" * 48
        return default

    return _INTERPOLATION.sub(one, value)


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: _interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}


def _port_of(settings: type[BaseSettings]) -> int:
    default = settings.model_fields["port"].default
    assert isinstance(default, int)
    return default


def test_compose_files_parse() -> None:
    """Both compose files are YAML mappings with services (the light one overrides `store`)."""
    main = _load(COMPOSE)
    light = _load(LIGHT)
    assert main["services"]
    assert set(light["services"]) == {"store"}
    assert "store" in main["services"]


def test_topology_is_the_production_shape() -> None:
    """3 NATS nodes clustered with JetStream, Redis, store, provision job, 2 of each, the LB."""
    services = _services()
    nats = [n for n in services if n.startswith("nats-")]
    assert len(nats) == 3
    for name in nats:
        command = services[name]["command"]
        assert "--js" in command
        assert command[command.index("--cluster_name") + 1] == "chat"
        routes = command[command.index("--routes") + 1].split(",")
        assert {r.split("//")[1].split(":")[0] for r in routes} == set(nats)
    assert {"redis", "store", "provision", "lb"} <= set(services)
    provision = services["provision"]["command"]
    assert provision[-3:] == ["infra.provision", "--replicas", "3"]
    kinds: dict[str, int] = {}
    for svc in _app_services().values():
        kind = svc["environment"]["CHAT_SERVICE_NAME"]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == {"users": 2, "rooms": 2, "history": 2, "ws-edge": 2, "provision": 1}
    node_ids = [
        svc["environment"]["CHAT_NODE_ID"]
        for svc in _app_services().values()
        if svc["environment"]["CHAT_SERVICE_NAME"] == "ws-edge"
    ]
    assert sorted(node_ids) == ["a", "b"]


def test_build_contexts_and_dockerfiles_exist() -> None:
    """Every `build` names an existing context and Dockerfile; every image is multi-stage,
    non-root, installs from the hashed lock file and has a HEALTHCHECK."""
    builds = 0
    for name, svc in {**_services(), **_load(LIGHT)["services"]}.items():
        build = svc.get("build")
        if build is None:
            assert "image" in svc, name
            continue
        builds += 1
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context.is_dir(), name
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        text = dockerfile.read_text()
        assert len(re.findall(r"(?m)^FROM ", text)) >= 2, f"{name}: not multi-stage"
        assert re.search(r"(?m)^USER (?!root|0\b)", text), f"{name}: runs as root"
        assert "HEALTHCHECK" in text, name
        if "requirements.lock" in text:
            assert "--require-hashes -r /requirements.lock" in text, name
    assert builds >= 9
    assert (ROOT / ".dockerignore").is_file()


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_each_service_dockerfile_matches_its_settings(kind: str) -> None:
    """A service's Dockerfile runs its module and exposes/checks its settings' default port."""
    path, module = DOCKERFILES[kind]
    text = (ROOT / path).read_text()
    port = _port_of(SETTINGS[kind])
    assert f'CMD ["python", "-m", "{module}"]' in text
    assert f"EXPOSE {port}" in text
    assert f"CHAT_PORT={port}" in text
    assert f"CHAT_SERVICE_NAME={kind}" in text
    assert "--require-hashes" in text


def test_every_environment_variable_is_a_real_setting() -> None:
    """Each CHAT_* a service gets is a field of that service's Settings, and the values parse."""
    for name, svc in _app_services().items():
        env = _env(svc)
        settings = SETTINGS[env["CHAT_SERVICE_NAME"]]
        fields = set(settings.model_fields)
        for key in env:
            assert key.startswith("CHAT_"), f"{name}: {key} is not a CHAT_ setting"
            field = key.removeprefix("CHAT_").lower()
            assert field in fields, f"{name}: {key} is not a setting of {settings.__module__}"
        values = {k.removeprefix("CHAT_").lower(): v for k, v in env.items()}
        parsed = settings.model_validate(values)  # production values pass validation
        assert getattr(parsed, "env", None) == "production"


def test_every_service_has_a_healthcheck_restart_policy_and_limits() -> None:
    """Servers have a healthcheck, a restart policy and resource limits; the job restarts on
    failure only and everything that needs it waits for it."""
    for name, svc in _services().items():
        assert svc.get("restart"), name
        if name in JOBS:
            assert svc["restart"].startswith("on-failure"), name
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test"), f"{name}: no healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory"), f"{name}: no memory limit"
        assert limits.get("cpus"), f"{name}: no cpu limit"
    for name, svc in _app_services().items():
        if name in JOBS:
            continue
        depends = svc.get("depends_on") or {}
        assert depends.get("provision", {}).get("condition") == "service_completed_successfully"


def test_ports_agree_with_the_settings_defaults() -> None:
    """CHAT_PORT, `expose`, the healthcheck URL and the LB's upstreams use each default port."""
    lb_env = _services()["lb"]["environment"]
    upstream = {"users": "USERS", "rooms": "ROOMS", "history": "HISTORY", "ws-edge": "EDGE"}
    for name, svc in _app_services().items():
        kind = svc["environment"]["CHAT_SERVICE_NAME"]
        if kind in JOBS:
            continue
        port = _port_of(SETTINGS[kind])
        assert int(svc["environment"]["CHAT_PORT"]) == port, name
        assert str(port) in [str(p) for p in svc.get("expose", [])], name
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"]), name
        targets = [v for k, v in lb_env.items() if k.startswith(f"LB_{upstream[kind]}_")]
        assert f"{name}:{port}" in targets, f"{name} is not behind the LB on {port}"
    assert not any(svc.get("ports") for n, svc in _services().items() if n != "lb")


def test_lb_renders_the_one_nginx_template() -> None:
    """The LB mounts compose/nginx/nginx.conf.template and gives a value to every placeholder
    (envsubst is limited to exactly those names, so nginx's own $variables survive)."""
    svc = _services()["lb"]
    template = lb.TEMPLATE.read_text()
    names = lb.placeholders(template)
    assert names
    assert set(svc["environment"]) == names
    script = " ".join(svc["command"])
    assert {n for n in re.findall(r"\$\$\{(LB_[A-Z0-9_]+)\}", script)} == names
    mounts = [v.split(":")[0] for v in svc["volumes"]]
    assert (COMPOSE_DIR / mounts[0]).resolve() == lb.TEMPLATE
    rendered = lb.render(template, {k: str(v) for k, v in svc["environment"].items()})
    assert "${" not in rendered
    assert "$http_upgrade" in rendered


def test_every_copied_path_is_in_the_build_context() -> None:
    """.dockerignore excludes everything but what is named: each `COPY` source of every
    Dockerfile must be one of those names (or under one), or the build fails on a machine
    with Docker (which this one has not)."""
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copied = 0
    for dockerfile in ROOT.glob("**/Dockerfile"):
        if any(part in (".venv", "node_modules") for part in dockerfile.parts):
            continue
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                copied += 1
                assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
                    f"{dockerfile.relative_to(ROOT)}: {source} is excluded by .dockerignore"
                )
                assert (ROOT / source).exists(), f"{dockerfile.relative_to(ROOT)}: {source}"
    assert copied >= 10
