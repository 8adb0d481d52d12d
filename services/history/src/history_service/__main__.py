"""`python -m history_service`: serve the app on the configured host and port."""

from __future__ import annotations

from history_service.app import create_app
from history_service.settings import Settings
from infra.serve import serve


def main() -> None:
    settings = Settings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
