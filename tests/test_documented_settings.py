"""Every setting a service reads is documented (README or docs/), so none is a secret knob."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_service_setting_is_documented() -> None:
    """Each field of each service's settings, as its CHAT_ variable, appears in README.md or
    docs/*.md (a table row or the text)."""
    from history_service.settings import Settings as History
    from rooms_service.settings import Settings as Rooms
    from users_service.settings import Settings as Users
    from ws_edge.settings import Settings as Edge

    docs = (ROOT / "README.md").read_text() + "".join(
        page.read_text() for page in sorted((ROOT / "docs").glob("*.md"))
    )
    missing = sorted(
        {
            f"CHAT_{name.upper()}"
            for settings in (Users, Rooms, History, Edge)
            for name in settings.model_fields
            if f"CHAT_{name.upper()}" not in docs
        }
    )
    assert missing == []
