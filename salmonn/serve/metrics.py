"""Prometheus metrics of one server (a registry of its own, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batchinfo import BatchInfo

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """Requests by route and status, queue depth, batch sizes, audio seconds, tokens, cancellations."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "salmonn_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.in_flight = Gauge(
            "salmonn_queue_depth", "Requests admitted and not yet answered", registry=r
        )
        self.batch_size = Histogram(
            "salmonn_batch_size",
            "Clips or text prompts per model call (with continuous batching: per prefill)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "salmonn_batch_requests",
            "Requests merged into one model call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decode_batch = Histogram(
            "salmonn_decode_batch_size",
            "Items decoding together in one continuous-batching step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_seconds = Counter(
            "salmonn_model_seconds", "Seconds spent in model calls", registry=r
        )
        self.audio_seconds = Counter(
            "salmonn_audio_seconds", "Seconds of audio through the model", registry=r
        )
        self.tokens = Counter("salmonn_generated_tokens", "Tokens generated", registry=r)
        self.cancelled = Counter(
            "salmonn_requests_cancelled",
            "Requests whose work was cancelled (client gone, or shutdown past its grace)",
            ["reason"],
            registry=r,
        )

    def observe_batch(self, info: BatchInfo) -> None:
        if info.items:  # a model call, or a prefill of items joining a running decode
            self.batch_size.labels(info.kind).observe(info.items)
            self.batch_requests.observe(info.requests)
        if info.running:
            self.decode_batch.observe(info.running)
        self.model_seconds.inc(info.seconds)
        self.audio_seconds.inc(info.audio_seconds)
        self.tokens.inc(info.tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
