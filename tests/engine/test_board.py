"""What the processes of a multi-process service share in memory: the board (load, readiness, each worker's
requests on their way and memory held) and a worker's audio arena. Two attachments of one memfd stand for
two processes (a mapping is a mapping); the service itself is tested in tests/server/test_workers.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from app.core.errors import Overloaded
from app.engine.admission import SharedMemoryBudget, SharedOnTheirWay
from app.engine.arena import KEEP_BYTES, RELEASE_BYTES, Arena, ArenaView
from app.engine.board import Board
from app.engine.load import Load


def other_process_view(board: Board) -> Board:
    return Board.attach(os.dup(board.fd), board.max_workers)


def test_the_inference_process_publishes_its_load_and_readiness() -> None:
    board = Board.create(3)
    seen = other_process_view(board)
    assert not seen.ready
    generation = board.inference_started(pid=1234)
    load = Load(
        speech_backlog=16000, speech_rate=1.6e6, embed_backlog=32000, embed_rate=3.2e5, request_samples=48000
    )
    board.publish(load, time.monotonic())
    board.set_ready(True)
    assert (seen.ready, seen.generation, seen.inference_pid) == (True, generation, 1234)
    assert seen.load() == load
    assert seen.load().expected_wait_s() == pytest.approx(0.01 + 0.1)


def test_requests_on_their_way_count_for_every_worker() -> None:
    board = Board.create(2)
    first, second = SharedOnTheirWay(board, 0), SharedOnTheirWay(other_process_view(board), 1)
    first.move(1, 0)
    second.move(0, 48000)
    assert first.totals() == second.totals() == (1.0, 48000.0)
    first.move(-5, 0)  # never below zero
    assert second.totals() == (0.0, 48000.0)
    board.clear_slot(1)  # worker 1 died: what it had on its way is gone
    assert first.totals() == (0.0, 0.0)


def test_one_memory_budget_for_every_worker() -> None:
    board = Board.create(2)
    a = SharedMemoryBudget(100, board, 0)
    b = SharedMemoryBudget(100, other_process_view(board), 1)
    assert a.try_take(60)
    assert not b.try_take(50)  # 110 > 100: refused, and taken back
    assert b.try_take(40)
    assert (board.held_bytes(), a.used_bytes, b.used_bytes) == (100, 60, 40)
    a.give_back(60)
    assert b.try_take(50)
    board.clear_slot(1)
    assert board.held_bytes() == 0


def test_the_arena_hands_audio_across_and_reuses_its_blocks() -> None:
    arena = Arena(1 << 20)
    view = ArenaView(os.dup(arena.fd))
    waves = [
        np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((1000, 5, 70000))
    ]
    offsets = [arena.put(w) for w in waves]
    assert len(set(offsets)) == 3
    for wave, offset in zip(waves, offsets, strict=True):
        np.testing.assert_array_equal(view.copy(offset, wave.size), wave)
    for offset in offsets:
        arena.free(offset)
    assert arena.used_bytes == 0
    # Freed blocks merge: the whole arena is one block again.
    big = arena.put(np.zeros((1 << 20) // 4, dtype=np.float32))
    assert big == 0
    with pytest.raises(Overloaded):
        arena.put(np.zeros(10, dtype=np.float32))
    arena.free(big)
    view.close()
    arena.close()


def test_the_arena_keeps_the_memory_steady_traffic_reuses_and_hands_back_a_bursts() -> None:
    """A memfd's st_blocks count the pages it holds: the blocks steady traffic cycles through stay
    (handing them back after every request cost more than the rest of the arena's work), the pages a
    burst wrote beyond ``KEEP_BYTES`` go back to the kernel once freed."""
    arena = Arena(KEEP_BYTES + 8 * RELEASE_BYTES)

    def held() -> int:
        return os.fstat(arena.fd).st_blocks * 512

    wave = np.ones(48000, dtype=np.float32)  # 3 s at 16 kHz
    for _ in range(3):
        arena.free(arena.put(wave))
    assert wave.nbytes <= held() <= 2 * wave.nbytes
    burst = [arena.put(np.ones(RELEASE_BYTES // 4, dtype=np.float32)) for _ in range(6)]
    assert held() >= 6 * RELEASE_BYTES
    for offset in burst:
        arena.free(offset)
    assert arena.used_bytes == 0
    assert held() <= KEEP_BYTES
    arena.free(arena.put(wave))  # the arena is still whole and usable
    assert arena.used_bytes == 0
    arena.close()
