"""Protocol logic without I/O: frame parsing, rate limits, per-connection delivery bookkeeping."""
