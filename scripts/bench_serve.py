"""Load on simlearn-serve: requests/s and p50/p99 latency of concurrent clients on localhost, answers checked.

The real command runs in its own process (``python -m simlearn.cli.serve``, on 127.0.0.1 and a free port); this
process runs ``--clients`` threads that each send ``--requests`` requests of one kind after another, and checks every
answer against the one a single request got before the load. Kinds: ``upload`` (POST /search with an image file:
decode, embed, search), ``id`` (POST /search with a gallery item id: search only) and ``image`` (GET /items/{id}).

    python train.py hydra.run.dir=outputs/serve_bench/run
    python scripts/digit_pngs.py --split test --out data/digit_pngs/test
    python scripts/bench_serve.py --ckpt outputs/serve_bench/run/checkpoints/last.ckpt --gallery data/digit_pngs/test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
KINDS = ("upload", "id", "image")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ckpt: Path, gallery: Path, port: int, cache_dir: Path, run_dir: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "simlearn.cli.serve",
        f"ckpt_path={ckpt}",
        f"gallery={gallery}",
        f"port={port}",
        f"cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_health(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"simlearn-serve exited with {process.returncode}:\n{process.stdout.read()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"simlearn-serve did not answer {url}/health within {timeout:.0f} s")


def request(client: httpx.Client, kind: str, item: int, image: bytes, k: int) -> httpx.Response:
    if kind == "upload":
        return client.post("/search", files={"image": ("query.png", image, "image/png")}, data={"k": str(k)})
    if kind == "id":
        return client.post("/search", json={"id": item, "k": k})
    return client.get(f"/items/{item}")


def answer_of(response: httpx.Response) -> object:
    return response.content if response.headers.get("content-type", "").startswith("image/") else response.json()


def run_load(url: str, kind: str, clients: int, requests: int, items: list[int], images: dict[int, bytes], k: int):
    """Every client sends ``requests`` requests of ``kind`` (items in turn); returns latencies (s), wall time and
    the number of wrong or failed answers."""
    with httpx.Client(base_url=url, timeout=60) as warm:
        expected = {i: answer_of(request(warm, kind, i, images[i], k)) for i in items}
    latencies: list[float] = []
    wrong = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_thread(seed: int) -> None:
        nonlocal wrong
        mine, bad = [], 0
        with httpx.Client(base_url=url, timeout=60) as client:
            barrier.wait()
            for n in range(requests):
                i = items[(seed + n) % len(items)]
                start = time.perf_counter()
                try:
                    response = request(client, kind, i, images[i], k)
                    ok = response.status_code == 200 and answer_of(response) == expected[i]
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - start)
                bad += not ok
        with lock:
            latencies.extend(mine)
            wrong += bad

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return np.array(latencies), time.perf_counter() - start, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint of simlearn-train")
    parser.add_argument("--gallery", type=Path, required=True, help="a folder of images (or an npz of simlearn-embed)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=50, help="requests per client and kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--startup-timeout", type=float, default=300)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        process = start_server(args.ckpt, args.gallery, port, Path(scratch) / "cache", Path(scratch) / "run")
        try:
            wait_for_health(url, process, args.startup_timeout)
            info = httpx.get(f"{url}/info", timeout=10).json()
            n = info["gallery"]["items"]
            items = sorted({int(i) for i in np.linspace(0, n - 1, 16)})
            images = {i: httpx.get(f"{url}/items/{i}", timeout=10).content for i in items}
            print(
                f"simlearn-serve: {n} items, {info['gallery']['dim']}-d, {info['model']['device']}; "
                f"{args.clients} clients x {args.requests} requests per kind, k={args.k}; "
                f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
            )
            print(f"{'kind':8} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'wrong':>6}")
            rows = []
            for kind in args.kinds:
                latencies, wall, wrong = run_load(url, kind, args.clients, args.requests, items, images, args.k)
                row = {
                    "kind": kind,
                    "requests": len(latencies),
                    "requests_per_s": round(len(latencies) / wall, 1),
                    "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                    "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
                    "wrong": wrong,
                }
                rows.append(row)
                print(
                    f"{kind:8} {row['requests']:8d} {row['requests_per_s']:8.1f} {row['p50_ms']:8.1f} "
                    f"{row['p99_ms']:8.1f} {wrong:6d}"
                )
            print(json.dumps({"items": n, "clients": args.clients, "results": rows}))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if any(row["wrong"] for row in rows):
            raise SystemExit("some answers were wrong under load")
        if process.returncode != 0:
            raise SystemExit(f"simlearn-serve did not stop cleanly on SIGTERM (exit status {process.returncode})")


if __name__ == "__main__":
    main()
