"""Workspace-wide pytest setup: the real-server fixtures live in `mesh.testing`.

`contracts` is imported here first: in importlib mode pytest would otherwise register the
folder `contracts/` (which holds `contracts/tests`) as a stand-in `contracts` package.
"""

import contracts  # noqa: F401

pytest_plugins = ["mesh.testing", "pytester"]
