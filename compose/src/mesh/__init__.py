"""The embedded local mesh: servers, the `make run` supervisor and the pytest fixtures."""
