"""I/O behind small Protocols: the store, the rooms directory (NATS query), the event publisher."""
