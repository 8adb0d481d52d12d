"""History service: stores messages exactly once with a gap-free per-room seq, serves history."""
