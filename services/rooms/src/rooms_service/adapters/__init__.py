"""Adapters of the rooms service, each behind a small Protocol (fakes in `fakes.py`)."""
