"""Prometheus metrics (`GET /metrics`, text format): what an operator graphs across instances without reading logs.

Counters and histograms are this process's (the `baton serve` side: HTTP, intake, relay, watcher, inbox); gauges
of lag and leases are read from the store and the views database when scraped, so every instance reports the
whole installation's read models and leases, including those its projector process or another instance holds.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter(
    "baton_http_requests",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
http_seconds = Histogram(
    "baton_http_request_seconds",
    "HTTP request latency by method and route template, from the first byte in to the last byte out.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
commands = Counter(
    "baton_commands",
    "Commands by channel (http, nats), action and outcome (accepted, rejected, replayed, unavailable).",
    ["channel", "action", "outcome"],
    registry=REGISTRY,
)
command_seconds = Histogram(
    "baton_command_seconds",
    "Command latency by channel: an HTTP command's request; a department batch's deciding and storing, per batch.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
group_commit = Histogram(
    "baton_group_commit_commands",
    "Commands saved together in one transaction (HTTP group commit and the intake's batches).",
    ["channel"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 100, 128, 200),
    registry=REGISTRY,
)
nats_events = Counter(
    "baton_nats_connection_events",
    "This process's NATS connection: disconnects and reconnects.",
    ["event"],
    registry=REGISTRY,
)
relay_published = Counter(
    "baton_relay_published_events", "Events this process's relay published to BATON_EVENTS.", registry=REGISTRY
)
relay_resyncs = Counter(
    "baton_relay_resyncs", "Times this process's relay re-read BATON_EVENTS after a failure.", registry=REGISTRY
)
lease_changes = Counter(
    "baton_lease_changes",
    "Roles this process took (a takeover or a first holding) or lost, by role.",
    ["role", "change"],
    registry=REGISTRY,
)
fenced_writes = Counter(
    "baton_fenced_writes",
    "Writes refused because their process no longer held the role's lease, by role.",
    ["role"],
    registry=REGISTRY,
)
lag = Gauge(
    "baton_lag_events",
    "Events stored but not yet handled, by follower (relay, notary, each projection).",
    ["follower"],
    registry=REGISTRY,
)
store_position = Gauge("baton_store_position", "The position of the newest stored event.", registry=REGISTRY)
lease_holder = Gauge(
    "baton_lease_holder",
    "1 for each role's current holder (instance/pid); the holder label changes on a failover.",
    ["role", "holder"],
    registry=REGISTRY,
)
lease_epoch = Gauge(
    "baton_lease_epoch", "Each role's lease epoch: it grows by one on every takeover.", ["role"], registry=REGISTRY
)
lease_expires = Gauge(
    "baton_lease_expires_in_seconds",
    "Seconds until each role's lease expires unrenewed (negative: nobody holds it).",
    ["role"],
    registry=REGISTRY,
)


class Timer:
    """Seconds since it was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started


def set_leases(leases: dict[str, dict[str, Any]]) -> None:
    """Gauges of every lease as the views database has them now."""
    lease_holder.clear()
    for role, lease in leases.items():
        if lease["expires_in"] > 0:
            lease_holder.labels(role, lease["holder"]).set(1)
        lease_epoch.labels(role).set(lease["epoch"])
        lease_expires.labels(role).set(lease["expires_in"])


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
