"""A failing test's report carries what its service processes logged at warning and above."""

from __future__ import annotations

import pytest

INNER = """
import json
from mesh.testing import Infra, ServiceLauncher, ServiceProcess

def mesh(tmp_path):
    log = tmp_path / "svc.log"
    lines = [
        {"level": "info", "msg": "quiet startup line"},
        {"level": "warning", "msg": "users did not answer: TimeoutError"},
        {"level": "error", "msg": "publish failed"},
    ]
    log.write_text("\\n".join(json.dumps(line) for line in lines))
    launcher = ServiceLauncher(Infra("", "", "", "p_", "local", tmp_path))
    launcher.started.append(ServiceProcess("svc-a", "x", 1234, {}, log))
    return launcher

def test_fails_while_its_mesh_runs(tmp_path):
    mesh(tmp_path)
    assert False, "the test's own failure"

def test_fails_after_its_mesh_stopped(tmp_path):
    ServiceLauncher.live.clear()
    launcher = mesh(tmp_path)
    launcher.stop_all()
    assert False, "second failure"
"""


def test_failure_report_shows_the_services_warnings_and_errors(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["mesh.testing"]')
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # one section, for the test whose launcher was still live
    assert out.count("trouble logged by svc-a") == 1, out
    result.stdout.fnmatch_lines(
        [
            "*trouble logged by svc-a*",
            "svc-a on port 1234: running",
            '*"level": "warning"*users did not answer*',
            '*"level": "error"*publish failed*',
        ]
    )
    assert "quiet startup line" not in out
