"""The load balancer's one configuration template (compose/nginx/nginx.conf.template).

docker-compose renders it with `envsubst` in the `lb` container; the tests render it here with
free ports and temp folders and run Debian's nginx as a process (own prefix, pid and logs,
`daemon off;`), stopped by its pid.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from mesh import servers

TEMPLATE = servers.REPO_ROOT / "compose" / "nginx" / "nginx.conf.template"
_PLACEHOLDER = re.compile(r"\$\{(LB_[A-Z0-9_]+)\}")


def placeholders(text: str) -> set[str]:
    """The `${LB_...}` names a template uses (nginx's own `$vars` are not among them)."""
    return set(_PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace every `${LB_...}`; a name without a value is an error (as envsubst would leave
    it unreplaced and nginx would fail later with a less clear message)."""
    missing = placeholders(text) - set(values)
    if missing:
        raise KeyError(f"no value for {', '.join(sorted(missing))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def find_nginx() -> str | None:
    """Debian's nginx (scripts/install-nginx.sh installs it), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if Path(candidate).exists():
            return candidate
    return None


def nginx_values(
    workdir: Path,
    port: int,
    users: list[str],
    rooms: list[str],
    history: list[str],
    edges: list[str],
    idle_timeout: str = "1h",
    fail_timeout: str = "10s",
    signup_rate: str = "30r/m",
    signup_burst: int = 30,
) -> dict[str, str]:
    """Template values for an nginx on 127.0.0.1:`port` in front of these host:port replicas
    (two per kind, as in compose; one address is used twice when only one is given)."""

    def two(kind: str, addresses: list[str]) -> dict[str, str]:
        if not addresses:
            raise ValueError(f"no {kind} address")
        first, second = addresses[0], addresses[-1]
        return {f"LB_{kind}_1": first, f"LB_{kind}_2": second}

    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    return {
        "LB_LISTEN": f"127.0.0.1:{port}",
        "LB_PID": str(workdir / "nginx.pid"),
        "LB_ERROR_LOG": str(workdir / "logs" / "error.log"),
        "LB_ACCESS_LOG": str(workdir / "logs" / "access.log"),
        "LB_TEMP_DIR": str(workdir / "temp"),
        "LB_WS_IDLE_TIMEOUT": idle_timeout,
        "LB_FAIL_TIMEOUT": fail_timeout,
        "LB_SIGNUP_RATE": signup_rate,
        "LB_SIGNUP_BURST": str(signup_burst),
        **two("USERS", users),
        **two("ROOMS", rooms),
        **two("HISTORY", history),
        **two("EDGE", edges),
    }


def nginx_command(nginx: str, workdir: Path, conf: Path) -> list[str]:
    """nginx in the foreground (the template says `daemon off;`) with its own prefix."""
    return [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "logs" / "error.log")]
