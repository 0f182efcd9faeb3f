"""How much Redis memory the audit trail of decisions takes, how long its cap covers, and what writing
an event adds to a decision's time.

    .venv/bin/python scripts/audit_footprint.py --redis-url redis://127.0.0.1:6379/0 [--events 100000]
        [--rate 1000] [--max-events 100000]

Appends ``--events`` verify decisions the way the service does (``AuditLog.queue``: the same fields,
the same ``XADD MAXLEN ~``) to the decisions stream of a tenant under a random namespace, reads the
stream's size with ``MEMORY USAGE ... SAMPLES 0`` (every entry counted), prints bytes per event and what
``VOXGATE_AUDIT_MAX_EVENTS`` (``--max-events``) holds and covers at ``--rate`` decisions per second,
then deletes the stream. Use a Redis of the version you run: listpack encoding differs between versions.

Then (``--timings N``, 0 = skip) it times, N times each: a verification's settling batch without its
audit event (the lockout script), the same batch with the event queued into it (what the service does),
and the event appended on its own (one awaited ``XADD``, what a separate write would cost).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from app.access.audit import AuditEvent, AuditLog
from app.access.lockout import Lockout
from app.store.connection import Batch, redis_client

BATCH = 1000


def decision(n: int) -> AuditEvent:
    """A typical verify decision: a 12-hex key id, a 16-character speaker id, a 32-hex request id."""
    score = random.uniform(-0.2, 1.0)
    return AuditEvent(
        time.time(), "acme", secrets.token_hex(6), f"customer-{n % 1_000_000:07d}", "verify", "ok",
        uuid.uuid4().hex, score=score, threshold=0.75, threshold_source="model", match=score >= 0.75,
    )  # fmt: skip


async def measure(url: str, events: int) -> float:
    client = redis_client(url, timeout_s=30.0)
    audit = AuditLog(client, f"footprint-{uuid.uuid4().hex[:8]}", maxlen=events)
    stream = audit.streams("acme")[1]
    try:
        for start in range(0, events, BATCH):
            batch = Batch(client)
            for n in range(start, min(events, start + BATCH)):
                audit.queue(batch, decision(n))  # what a decision queues into its batch
            await batch.run()
        length = int(await client.xlen(stream))
        usage = int(await client.memory_usage(stream, samples=0) or 0)
        return usage / length
    finally:
        await client.delete(stream)
        await client.aclose()


async def timings(url: str, repeat: int) -> dict[str, tuple[float, float]]:
    """Median and p99 (ms) of each way of writing a decision's event."""
    logging.disable(logging.CRITICAL)  # the log line is not what is timed
    client = redis_client(url)
    namespace = f"footprint-{uuid.uuid4().hex[:8]}"
    audit = AuditLog(client, namespace, maxlen=repeat * 3)
    lockout = Lockout(client, namespace, failures=5, window_s=600, lock_s=900, max_pending_s=60)

    async def settle(with_event: bool) -> None:
        batch = Batch(client)
        lockout.queue_finish(batch, "acme", "customer-0000001", secrets.token_hex(8), "match")
        if with_event:
            audit.queue(batch, decision(0))
        await batch.run()

    async def alone() -> None:
        await audit.record(decision(0))

    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "settling batch without the event": lambda: settle(False),
        "settling batch with the event queued": lambda: settle(True),
        "the event appended on its own": alone,
    }
    found = {}
    try:
        for name, way in ways.items():
            for _ in range(min(200, repeat)):
                await way()  # warm up
            taken = []
            for _ in range(repeat):
                start = time.perf_counter()
                await way()
                taken.append(time.perf_counter() - start)
            taken.sort()
            found[name] = (statistics.median(taken) * 1e3, taken[int(0.99 * (len(taken) - 1))] * 1e3)
        return found
    finally:
        await client.delete(*audit.streams("acme"))
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions per second")
    parser.add_argument("--max-events", type=int, default=100_000, help="VOXGATE_AUDIT_MAX_EVENTS")
    parser.add_argument("--timings", type=int, default=3000, help="times each way of writing (0 = skip)")
    args = parser.parse_args()
    per_event = asyncio.run(measure(args.redis_url, args.events))
    size = per_event * args.max_events
    print(f"{per_event:.1f} bytes per decision event (MEMORY USAGE over {args.events} events)")
    print(
        f"VOXGATE_AUDIT_MAX_EVENTS={args.max_events}: {size / 2**20:.1f} MiB per stream, "
        f"{args.max_events / args.rate:.0f} s of decisions at {args.rate:g}/s"
    )
    if args.timings:
        for name, (median, p99) in asyncio.run(timings(args.redis_url, args.timings)).items():
            print(f"{name}: median {median:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
