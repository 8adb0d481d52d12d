"""No route or dependency of any service runs in FastAPI's thread pool: a plain `def` there
is handed to a worker thread and back on every request (the history profile showed the
pool's thread busy on every page read), where the code never blocks."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

ROUTERS = {
    "users": ["users_service.entrypoints.http"],
    "rooms": ["rooms_service.entrypoints.http"],
    "history": ["history_service.entrypoints.http"],
    "edge": ["ws_edge.entrypoints.http", "ws_edge.entrypoints.rest", "ws_edge.entrypoints.sse"],
}


def _routes(service: str) -> list[APIRoute]:
    routes: list[APIRoute] = []
    for name in ROUTERS[service]:
        router: APIRouter = importlib.import_module(name).router
        routes.extend(r for r in router.routes if isinstance(r, APIRoute))
    assert routes, service
    return routes


def _calls(dependant: Any) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _runs_on_the_loop(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 (security schemes are callable objects)
    )


@pytest.mark.parametrize("service", ["users", "rooms", "history", "edge"])
def test_every_route_and_dependency_is_async(service: str) -> None:
    """Each endpoint and each dependency it uses (recursively) is a coroutine function."""
    pooled = sorted(
        {
            f"{', '.join(sorted(route.methods))} {route.path}: {call.__qualname__}"
            for route in _routes(service)
            for call in _calls(route.dependant)
            if not _runs_on_the_loop(call)
        }
    )
    assert pooled == []
