"""Real redis-server processes (a session one, or one a test can stop and restart), settings with private
Redis namespaces, and snapshots of what a namespace holds.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from app.core.settings import Settings
from app.store.keys import KeySchema
from app.store.thresholds import ThresholdOverrides


# --- redis-server processes -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """The session's private redis-server (started by the ``redis_server`` fixture in conftest.py)."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"redis://127.0.0.1:{port}/0"


class OwnRedis:
    """A redis-server this test can stop and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def settings_for(redis_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings with a private Redis namespace, so tests never see each other's keys."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_namespace": f"test-{uuid.uuid4().hex[:10]}",
        "model_dir": model_dir,
        "warmup": False,
        "intra_op_threads": 1,
        "index_sync_interval_s": 0.05,
        # Without warm-up the engine has no measured throughput: tests of other things should not be
        # refused by admission's cautious first estimate (tests/engine/test_admission.py sets its own).
        "max_queue_wait_s": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def redis_snapshot(redis_url: str, namespace: str) -> dict[bytes, bytes | None]:
    """Every stored-data key of the namespace with its serialised value: equal snapshots = nothing
    changed. The audit streams and rate-limit buckets are left out: a refused request is *meant* to
    leave an audit event and to spend a token."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(client.scan_iter(match=f"{namespace}:*"))
        return {
            key: client.dump(key)
            for key in keys
            if not re.search(rb":audit(:[a-z]+)?$", key) and b":ratelimit:" not in key
        }
    finally:
        client.close()


def set_threshold_policy(
    settings: Settings, tenant: str, *, threshold: float | None = None, floor: float | None = None
) -> None:
    """The tenant's threshold policy, as `voxgate tenants policy` sets it (e.g. ``floor=-1``: requests may
    ask for any threshold)."""
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        key = KeySchema(settings.redis_namespace, tenant, "-").policy
        client.delete(key)
        fields = ThresholdOverrides(threshold, floor).fields()
        if fields:
            client.hset(key, mapping=fields)
    finally:
        client.close()
