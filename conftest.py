"""Workspace-wide pytest setup: the real-server fixtures live in `mesh.testing`."""

pytest_plugins = ["mesh.testing"]
