"""The wire between a worker and the inference process (app/engine/ipc.py), on a real Unix socket pair."""

from __future__ import annotations

import asyncio
import socket

from app.engine import ipc


def test_messages_written_in_one_turn_leave_in_one_write_and_arrive_in_order() -> None:
    async def scenario() -> tuple[list[int], list[tuple[object, ...]]]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, their_writer = await asyncio.open_unix_connection(sock=theirs)
        our_reader, writer = await asyncio.open_unix_connection(sock=ours)
        writes: list[int] = []
        send = writer.transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            send(data)

        writer.transport.write = counted  # type: ignore[method-assign]
        answers = ipc.FrameWriter(writer)
        for n in range(3):  # one turn of the loop: the answers of one batch
            answers.write(("result", n, ((b"", b"\x00" * 8),)))
        await asyncio.sleep(0)
        answers.write(("error", 3, "overloaded", "busy", {}, 1.5))  # a later turn: a write of its own
        await asyncio.sleep(0)
        received = [await ipc.read_message(reader) for _ in range(4)]
        writer.close()
        their_writer.close()
        assert not our_reader.at_eof()
        return writes, received

    writes, received = asyncio.run(scenario())
    assert len(writes) == 2
    assert [m[:2] for m in received] == [("result", 0), ("result", 1), ("result", 2), ("error", 3)]
    assert received[0][2] == ((b"", b"\x00" * 8),)
