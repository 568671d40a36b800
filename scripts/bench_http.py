"""Benchmark the HTTP model against the async ceiling and the openai SDK, on 127.0.0.1.

Run from the repository root: `pip install -e '.[bench]' && python scripts/bench_http.py`.
Everything is measured in the same run against the same local server, started by this script
in a subprocess (an asyncio server: it holds thousands of connections and costs the clients
no GIL time):

(a) throughput: 1024 chat completions, at most 128 at once, the server holding each request
    0.5 s (ideal: 8 waves = 4.0 s):
    - ours: `execute_steps_parallel` over `LocalExecutor(orch, max_parallel_tasks=128)`, every
      step's agent using one shared `OpenAICompatibleModel`;
    - the async ceiling: `asyncio` + `aiohttp`, a semaphore of 128;
    - `ThreadPoolExecutor(128)` + the `openai` SDK.
    Ratio = wall / async ceiling (target for ours: <= 1.05).
(b) per-call client overhead, sequential calls to a server that answers at once: time per call
    minus the floor (a raw socket sending prebuilt bytes on a kept-alive connection), for our
    `OpenAICompatibleModel.complete` and for `openai.OpenAI().chat.completions.create`.
    Ratio = ours / openai (target: <= 0.4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOTAL = 1024
LIMIT = 128
HOLD_S = 0.5
OVERHEAD_CALLS = 2000
REPEATS = 3

_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench server."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_BODY),
    _BODY,
)


# --- the server (run in a subprocess: `bench_http.py --serve DELAY`) ---------------------------


class _Protocol(asyncio.Protocol):
    """Answers every request with a canned chat completion after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_RESPONSE)


async def _serve(delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Protocol(delay), "127.0.0.1", 0, backlog=4096, reuse_address=True
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class Server:
    def __init__(self, delay: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(delay)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


# --- (a) throughput ---------------------------------------------------------------------------


def run_ours(base_url: str) -> float:
    from actor_orch import (
        AgentOptions,
        AgentOrchestrator,
        AgentStepSpec,
        LocalExecutor,
        OpenAICompatibleModel,
        execute_steps_parallel,
    )

    model = OpenAICompatibleModel(base_url, "bench", timeout=30.0)
    orchestrator = AgentOrchestrator()
    orchestrator.add_agent("llm", lambda: AgentOptions(model, retry=None))
    specs = [AgentStepSpec(f"t{i}", "llm", "bench", f"question {i}") for i in range(TOTAL)]
    executor = LocalExecutor(orchestrator, max_parallel_tasks=LIMIT)
    try:
        start = time.perf_counter()
        outcomes = execute_steps_parallel(executor, specs)
        wall = time.perf_counter() - start
    finally:
        close = getattr(executor, "close", None)  # a context manager with close() per API §5
        if callable(close):
            close()
        orchestrator.shutdown()
    model.close()
    failed = [o for o in outcomes if not o.success]
    assert not failed, failed[:3]
    return wall


def run_aiohttp(base_url: str) -> float:
    import aiohttp

    async def main() -> float:
        semaphore = asyncio.Semaphore(LIMIT)
        connector = aiohttp.TCPConnector(limit=LIMIT)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> str:
                async with semaphore:
                    body = {"model": "bench", "messages": [{"role": "user", "content": f"q{i}"}]}
                    async with session.post(f"{base_url}/chat/completions", json=body) as r:
                        data = await r.json()
                        return str(data["choices"][0]["message"]["content"])

            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(TOTAL)))
            return time.perf_counter() - start

    return asyncio.run(main())


def run_openai_threads(base_url: str) -> float:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=30.0)

    def one(i: int) -> str:
        reply = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"q{i}"}]
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(LIMIT) as pool:
        start = time.perf_counter()
        list(pool.map(one, range(TOTAL)))
        wall = time.perf_counter() - start
    client.close()
    return wall


# --- (b) per-call overhead --------------------------------------------------------------------


def per_call(calls: int, fn: Callable[[], Any]) -> float:
    for _ in range(200):  # warm up: connections, caches
        fn()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def overhead(base_url: str, port: int) -> dict[str, float]:
    import openai

    from actor_orch import ModelRequest, OpenAICompatibleModel, user_message

    request_body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    raw_request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(request_body), request_body)
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def floor() -> None:
        sock.sendall(raw_request)
        got = 0
        while got < len(_RESPONSE):
            got += len(sock.recv(65536))

    model = OpenAICompatibleModel(base_url, "bench")
    request = ModelRequest([user_message("hi")])

    def ours() -> None:
        model.complete(request)

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)

    def sdk() -> None:
        client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}])

    figures = {
        "floor": per_call(OVERHEAD_CALLS, floor),
        "ours": per_call(OVERHEAD_CALLS, ours),
        "openai": per_call(OVERHEAD_CALLS, sdk),
    }
    sock.close()
    client.close()
    model.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return 0

    ideal = TOTAL / LIMIT * HOLD_S
    print(f"(a) {TOTAL} calls, limit {LIMIT}, server holds each {HOLD_S}s (ideal {ideal:.2f}s)")
    server = Server(HOLD_S)
    try:
        walls: dict[str, float] = {}
        for name, run in (
            ("asyncio + aiohttp (ceiling)", run_aiohttp),
            ("ours: execute_steps_parallel", run_ours),
            ("ThreadPoolExecutor + openai SDK", run_openai_threads),
        ):
            walls[name] = min(run(server.base_url) for _ in range(REPEATS))
    finally:
        server.close()
    ceiling = walls["asyncio + aiohttp (ceiling)"]
    for name, wall in walls.items():
        of_ideal = ideal / wall
        print(
            f"    {name:34s} {wall:6.3f}s  {wall / ceiling:5.3f}x ceiling  {of_ideal:5.3f} of ideal"
        )
    ours_ratio = walls["ours: execute_steps_parallel"] / ceiling
    print(f"    ours / ceiling = {ours_ratio:.3f} (target <= 1.05)")

    print(f"(b) per-call client overhead, {OVERHEAD_CALLS} sequential calls, best of {REPEATS}")
    server = Server(0.0)
    try:
        figures = overhead(server.base_url, server.port)
    finally:
        server.close()
    floor = figures["floor"]
    for name in ("floor", "ours", "openai"):
        extra = "" if name == "floor" else f"  overhead {(figures[name] - floor) * 1e6:7.1f} us"
        print(f"    {name:8s} {figures[name] * 1e6:7.1f} us/call{extra}")
    ratio = (figures["ours"] - floor) / (figures["openai"] - floor)
    print(f"    ours / openai overhead = {ratio:.3f} (target <= 0.4)")
    print(f"    ours / openai per call = {figures['ours'] / figures['openai']:.3f}")
    return 0 if ours_ratio <= 1.05 and ratio <= 0.4 else 1


if __name__ == "__main__":
    sys.exit(main())
