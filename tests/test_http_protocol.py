"""The HTTP protocol sends a response's writes of one event-loop turn as one write, in order, and never
holds bytes past that turn, a close or an abort."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed


def test_writes_of_one_turn_are_sent_as_one_when_the_turn_ends() -> None:
    async def scenario() -> list[list[bytes]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"{}"))
        seen = [list(real.writes)]  # nothing sent during the turn
        assert transport.get_write_buffer_size() == 21
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        transport.write(b"next")  # a later turn's write is its own
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        assert not transport.is_closing()  # everything else is the real transport's
        return seen

    assert asyncio.run(scenario()) == [[], [b"HTTP/1.1 200 OK\r\n\r\n{}"], [b"HTTP/1.1 200 OK\r\n\r\n{}", b"next"]]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        for real in (closed, aborted):
            CoalescingTransport(real, loop).write(b"bye")  # type: ignore[arg-type]
        CoalescingTransport(closed, loop).close()  # type: ignore[arg-type]
        wrapped = CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
        wrapped.write(b"dropped")
        wrapped.abort()
        await asyncio.sleep(0)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.closed and closed.writes == [b"bye"]
    assert aborted.aborted and b"dropped" not in b"".join(aborted.writes)


@pytest.mark.parametrize("size", [10, 300_000])  # one segment; many, with flow control
def test_a_uvicorn_server_with_the_protocol_answers_whole_responses(size: int) -> None:
    async def big(_: object) -> JSONResponse:
        return JSONResponse({"data": "x" * size})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        Starlette(routes=[Route("/", big)]), host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol,
        log_level="warning", lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)

    async def scenario() -> list[int]:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:  # keep-alive: three responses on one connection
            sizes = [len((await client.get(f"http://127.0.0.1:{port}/")).json()["data"]) for _ in range(3)]
        server.should_exit = True
        await task
        return sizes

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [size] * 3
