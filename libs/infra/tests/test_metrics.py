"""infra.metrics: the cached label children count into the same series as `labels()`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from infra.metrics import labelled


def test_labelled_is_the_labels_child_and_counts_into_its_series() -> None:
    registry = CollectorRegistry()
    frames = Counter("t_frames_total", "test", ["kind"], registry=registry)
    latency = Histogram("t_latency_seconds", "test", ["command"], registry=registry)
    assert labelled(frames, "a") is labelled(frames, "a")
    assert labelled(frames, "a") is frames.labels("a")
    for _ in range(3):
        labelled(frames, "a").inc()
    labelled(frames, "b").inc()
    labelled(latency, "x").observe(0.002)
    assert registry.get_sample_value("t_frames_total", {"kind": "a"}) == 3
    assert registry.get_sample_value("t_frames_total", {"kind": "b"}) == 1
    assert registry.get_sample_value("t_latency_seconds_count", {"command": "x"}) == 1
    # another metric with the same label value is another series
    other = Counter("t_other_total", "test", ["kind"], registry=registry)
    labelled(other, "a").inc()
    assert registry.get_sample_value("t_frames_total", {"kind": "a"}) == 3
