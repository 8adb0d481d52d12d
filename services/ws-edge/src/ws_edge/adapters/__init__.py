"""I/O of the edge: the Redis connection map and the NATS bus."""
