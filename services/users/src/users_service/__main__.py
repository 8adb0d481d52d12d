"""`python -m users_service`: serve the users API on CHAT_HOST:CHAT_PORT (default 8001)."""

from __future__ import annotations

from infra.serve import serve
from users_service.app import create_app
from users_service.settings import Settings


def main() -> None:
    settings = Settings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
