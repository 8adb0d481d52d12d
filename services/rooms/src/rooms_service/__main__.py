"""`python -m rooms_service`: serve the rooms service on CHAT_HOST:CHAT_PORT (default 8003)."""

from __future__ import annotations

from infra.serve import serve
from rooms_service.app import create_app
from rooms_service.settings import Settings


def main() -> None:
    settings = Settings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
