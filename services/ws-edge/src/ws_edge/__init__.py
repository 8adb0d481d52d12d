"""ws-edge: WebSocket (and later SSE) endpoint holding live connections; fan-out from the bus."""
