"""How much Redis memory the audit trail of decisions takes, and how long its cap covers.

    .venv/bin/python scripts/audit_footprint.py --redis-url redis://127.0.0.1:6379/0 [--events 100000]
        [--rate 1000] [--max-events 100000]

Appends ``--events`` verify decisions the way the service does (``AuditLog.queue``: the same fields,
the same ``XADD MAXLEN ~``) to the decisions stream of a tenant under a random namespace, reads the
stream's size with ``MEMORY USAGE ... SAMPLES 0`` (every entry counted), prints bytes per event and what
``VOXGATE_AUDIT_MAX_EVENTS`` (``--max-events``) holds and covers at ``--rate`` decisions per second,
then deletes the stream. Use a Redis of the version you run: listpack encoding differs between versions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time
import uuid

from app.access.audit import AuditEvent, AuditLog
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions per second")
    parser.add_argument("--max-events", type=int, default=100_000, help="VOXGATE_AUDIT_MAX_EVENTS")
    args = parser.parse_args()
    per_event = asyncio.run(measure(args.redis_url, args.events))
    size = per_event * args.max_events
    print(f"{per_event:.1f} bytes per decision event (MEMORY USAGE over {args.events} events)")
    print(
        f"VOXGATE_AUDIT_MAX_EVENTS={args.max_events}: {size / 2**20:.1f} MiB per stream, "
        f"{args.max_events / args.rate:.0f} s of decisions at {args.rate:g}/s"
    )


if __name__ == "__main__":
    main()
