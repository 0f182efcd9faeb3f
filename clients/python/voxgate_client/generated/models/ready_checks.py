from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="ReadyChecks")


@_attrs_define
class ReadyChecks:
    """
    Attributes:
        engine_running (bool): Warm-up done and the batcher's worker thread alive.
        redis (bool): Redis answers PING.
        index_synced (bool): The identification index reached Redis on its last poll.
    """

    engine_running: bool
    redis: bool
    index_synced: bool

    def to_dict(self) -> dict[str, Any]:
        engine_running = self.engine_running

        redis = self.redis

        index_synced = self.index_synced

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "engine_running": engine_running,
                "redis": redis,
                "index_synced": index_synced,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        engine_running = d.pop("engine_running")

        redis = d.pop("redis")

        index_synced = d.pop("index_synced")

        ready_checks = cls(
            engine_running=engine_running,
            redis=redis,
            index_synced=index_synced,
        )

        return ready_checks
