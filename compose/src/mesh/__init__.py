"""The embedded local mesh: servers, supervisor, test fixtures."""
