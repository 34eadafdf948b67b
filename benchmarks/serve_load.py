"""Load test of ``ownmark serve`` with and without abusive slow clients (issue 7).

Starts the real server in its own process (``ownmark serve MODEL --port 0``, default limits)
on 127.0.0.1 and drives it from this process in two phases of ``--seconds`` each, back to
back on the same server:

1. **baseline**: ``--clients`` normal clients, each posting a batch of ``--batch`` real digits
   (Open Inference Protocol) in a loop over one keep-alive connection;
2. **abuse**: the same normal clients while ``--slow`` slow clients hold connections open,
   half of them trickling a request body a byte at a time, half trickling the request head;
   every slow client the server cuts (408, or closed) reconnects at once, so ``--slow`` are
   connected throughout.

It records, for the normal clients of each phase, throughput and latency percentiles, and the
server process's peak resident memory (``VmHWM`` from ``/proc/<pid>/status``; a high-water
mark, so the abuse phase's value covers both phases), and what the slow clients got. It
prints a table with the abuse/baseline ratios and writes ``serve_load.md`` and
``serve_load.json`` under ``--out-dir``. Load generator and server share the machine's cores.

The model is an untrained ``zhang_mnist`` (seed 0): serving cost does not depend on what the
weights learnt.

Usage::

    python benchmarks/serve_load.py                  # ~1 minute on 2 CPU cores
    python benchmarks/serve_load.py --clients 8 --slow 200 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from ownmark.data import load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.models import save_model
from ownmark.workflows import new_model, run_record

SLOW_BODY_BYTES = 100_000  # what a slow client announces (and never finishes sending)


def start_server(model: Path, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """``ownmark serve`` in its own process; returns it and its base URL."""
    command = [sys.executable, "-m", "ownmark.cli", "serve", str(model), "--port", "0"]
    command += ["--name", "model", "--access-log", str(workdir / "access.jsonl")]
    stderr = (workdir / "server.stderr").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://[^/\s]+)/", line)
    if found is None:
        process.kill()
        raise SystemExit(f"ownmark serve did not start: {line!r}")
    return process, found.group(1)


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak) and VmRSS (now) of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def infer_body(images: torch.Tensor) -> dict[str, Any]:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "data": images.reshape(-1).tolist(),
    }
    return {"inputs": [tensor]}


def normal_clients(url: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads posting ``body`` in a loop for ``seconds``; latencies of 200s."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    status = str(client.post("/v2/models/model/infer", json=body).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - start
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(took)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    ok = statuses.get("200", 0)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []
    batch = len(body["inputs"][0]["data"]) // 784

    def ms(q: int) -> float | None:
        return round(1000 * cuts[q - 1], 1) if cuts else None

    return {
        "seconds": round(wall, 2),
        "requests_ok": ok,
        "statuses": statuses,
        "requests_per_s": round(ok / wall, 2),
        "images_per_s": round(ok * batch / wall, 1),
        "latency_ms": {
            "p50": ms(50),
            "p90": ms(90),
            "p99": ms(99),
            "max": round(1000 * max(latencies), 1) if latencies else None,
        },
    }


class SlowClients:
    """``count`` connections that trickle a byte every ``interval`` s: half of them a request
    body (after a complete head), half a request head. One thread drives them all; a
    connection the server answers or closes is replaced at once."""

    def __init__(self, url: str, count: int, interval: float = 1.0) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.count = count
        self.interval = interval
        self.head = (
            "POST /v2/models/model/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {SLOW_BODY_BYTES}\r\n\r\n"
        ).encode()
        self.outcomes: dict[str, int] = {}
        self.lifetimes: list[float] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self, selector: selectors.BaseSelector, index: int) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=5)
        except OSError:
            self.refused += 1
            return
        trickle_head = index % 2 == 1
        if not trickle_head:
            sock.sendall(self.head)
        sock.setblocking(False)
        state = {
            "data": self.head if trickle_head else b"[" * SLOW_BODY_BYTES,
            "sent": 0,
            "answer": b"",
            "opened": time.monotonic(),
            "index": index,
        }
        selector.register(sock, selectors.EVENT_READ, state)

    def _close(self, selector: selectors.BaseSelector, sock: socket.socket, state: Any) -> None:
        selector.unregister(sock)
        sock.close()
        parts = state["answer"].split(b" ", 2)
        outcome = parts[1].decode() if len(parts) > 1 else "closed"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.lifetimes.append(time.monotonic() - state["opened"])

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for index in range(self.count):
            self._open(selector, index)
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                sock, state = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                state["answer"] += chunk
                if not chunk or b"\r\n\r\n" in state["answer"]:
                    self._close(selector, sock, state)
                    self._open(selector, state["index"])
            if time.monotonic() >= next_byte:
                next_byte += self.interval
                for key in list(selector.get_map().values()):
                    sock, state = key.fileobj, key.data
                    assert isinstance(sock, socket.socket)
                    with contextlib.suppress(OSError):
                        sock.send(state["data"][state["sent"] : state["sent"] + 1])
                        state["sent"] += 1
        for key in list(selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()

    def summary(self) -> dict[str, Any]:
        return {
            "connected": self.count,
            "ended": self.outcomes,
            "refused_connections": self.refused,
            "median_lifetime_s": round(statistics.median(self.lifetimes), 2)
            if self.lifetimes
            else None,
        }


def markdown(record: dict[str, Any]) -> str:
    res = record["results"]
    base, abuse = res["baseline"], res["abuse"]
    cfg = record["config"]
    lines = [
        "# `ownmark serve` under load, with and without slow clients",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']}, {record['cpu_cores']} CPU cores (load generator and "
        f"server share them)  ",
        f"Date: {record['written']}; ownmark {record['ownmark_version']}, torch "
        f"{record['torch_version']}; {record['total_seconds']:.0f} s in all",
        "",
        f"{cfg['clients']} normal clients post {cfg['batch']} digits per request in a loop for "
        f"{cfg['seconds']:g} s per phase; in the abuse phase {cfg['slow']} slow clients (half "
        "trickling a body, half a request head, one byte per second, reconnecting whenever "
        "cut) stay connected throughout. Server limits at their defaults (body and head "
        "timeouts 10 s, 8 inference requests in flight, 256 connections).",
        "",
        "| normal clients | baseline | with slow clients | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]

    def row(name: str, a: float | None, b: float | None, unit: str = "") -> None:
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        shown_a = "-" if a is None else f"{a:g}{unit}"
        shown_b = "-" if b is None else f"{b:g}{unit}"
        lines.append(f"| {name} | {shown_a} | {shown_b} | {ratio} |")

    row("requests/s", base["requests_per_s"], abuse["requests_per_s"])
    row("images/s", base["images_per_s"], abuse["images_per_s"])
    for q in ("p50", "p90", "p99", "max"):
        row(f"latency {q}", base["latency_ms"][q], abuse["latency_ms"][q], " ms")
    row(
        "server peak RSS (VmHWM)", base["server_kib"]["VmHWM"], abuse["server_kib"]["VmHWM"], " KiB"
    )
    lines += [
        "",
        f"Statuses: baseline {base['statuses']}, with slow clients {abuse['statuses']}.  ",
        f"Slow clients: {res['slow_clients']}.  ",
        f"Server memory after start: {res['server_kib_start']} KiB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="normal clients, default 4")
    parser.add_argument("--slow", type=int, default=100, help="slow clients, default 100")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase, default 20")
    parser.add_argument("--batch", type=int, default=16, help="images per request, default 16")
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_dataset("digits")
    body = infer_body(data.test.images[: args.batch])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_file = workdir / "model.safetensors"
        save_model(new_model("zhang_mnist", data, seed=0), model_file)
        server, url = start_server(model_file, workdir)
        try:
            for _ in range(3):  # warm up: first forward passes, connection set-up
                httpx.post(f"{url}/v2/models/model/infer", json=body, timeout=60)
            results: dict[str, Any] = {"server_kib_start": memory_kib(server.pid)}
            print(f"baseline: {args.clients} clients for {args.seconds:g} s", flush=True)
            baseline = normal_clients(url, body, args.clients, args.seconds)
            baseline["server_kib"] = memory_kib(server.pid)
            print(f"abuse: {args.clients} clients + {args.slow} slow clients", flush=True)
            with SlowClients(url, args.slow) as slow:
                time.sleep(1.0)  # all connected and trickling
                abuse = normal_clients(url, body, args.clients, args.seconds)
                abuse["server_kib"] = memory_kib(server.pid)
            results.update(baseline=baseline, abuse=abuse, slow_clients=slow.summary())
            alive = httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200
            results["server_alive_after"] = alive
        finally:
            server.terminate()
            server.wait(timeout=20)
    record = run_record(
        benchmark="serve_load",
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        cpu_cores=os.cpu_count(),
        machine=platform.platform(),
        config=vars(args),
        results=results,
        total_seconds=time.perf_counter() - start,
    )
    out = Path(args.out_dir)
    write_json_atomic(out / "serve_load.json", record)
    text = markdown(record)
    write_text_atomic(out / "serve_load.md", text)
    print(text)


if __name__ == "__main__":
    main()
