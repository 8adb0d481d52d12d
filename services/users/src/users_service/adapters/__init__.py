"""Adapters of the users service: the store and the bus publisher, each behind a Protocol."""
