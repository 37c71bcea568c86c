"""The server (simlearn/serve/server.py): the start line, addresses and tokens, a stop while loading, a real uvicorn
under concurrent clients."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from simlearn.errors import UserError
from simlearn.serve import create_app
from simlearn.serve.server import bind, check_address, is_loopback, serve

from .serving import (
    TOKEN,
    free_port,
    live_server,
    serve_config,
    upload,
)


def test_the_start_line_names_an_address_a_browser_can_open():
    from simlearn.serve.server import open_lines

    assert open_lines("127.0.0.1", 8000) == "open http://127.0.0.1:8000/ in a browser"
    assert open_lines("::1", 8000) == "open http://[::1]:8000/ in a browser"
    for host, local in (("0.0.0.0", "http://127.0.0.1:8001/"), ("::", "http://[::1]:8001/")):
        line = open_lines(host, 8001)
        assert local in line and "from another machine http://<this host>:8001/" in line
        assert "0.0.0.0" not in line and "[::]" not in line


def test_binding_beyond_this_machine_needs_a_token(trained_run, gallery_dir, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("::")
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(UserError, match="auth_token") as refused:
            check_address(host, 8000, None)
        assert "\n" not in str(refused.value)
    assert check_address("0.0.0.0", "8000", TOKEN) == 8000
    with pytest.raises(UserError, match="fewer than 16"):
        check_address("0.0.0.0", 8000, "short")
    for port in (-1, 70000, "http", True):
        with pytest.raises(UserError, match="port"):
            check_address("127.0.0.1", port, None)
    # the command refuses before it loads anything
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="auth_token"):
        serve(serve_config(ckpt, gallery_dir, tmp_path / "cache", "host=0.0.0.0"))
    for override, expected in (
        ("k=0", "must be a positive"),
        ("max_k=-1", "must be a positive"),
        ("max_upload_mb=0", "must be a positive"),
        ("map.max_points=2.5", "must be a whole number"),
        ("map.projection=umap", "not one of tsne, pca"),
        ("organise.threshold=1.5", "not a cosine"),
    ):
        with pytest.raises(UserError, match=expected):
            serve(serve_config(ckpt, gallery_dir, tmp_path / "cache", override, f"port={free_port()}"))
    assert not (tmp_path / "cache").exists()
    # a port in use is one line, at once
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen"):
            bind("127.0.0.1", taken.getsockname()[1])


def test_a_start_stopped_while_loading_ends_cleanly(trained_run, gallery_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) while the gallery is embedded: one line, a normal return, the port free again."""
    import simlearn.serve.service as service_module

    def stopped(cfg):
        os.kill(os.getpid(), signal.SIGTERM)  # turned into KeyboardInterrupt while the service loads
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the start")

    monkeypatch.setattr(service_module, "open_service", stopped)
    before = signal.getsignal(signal.SIGTERM)
    port = free_port()
    serve(serve_config(trained_run / "checkpoints" / "last.ckpt", gallery_dir, tmp_path / "cache", f"port={port}"))
    assert "stopped before serving" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == before
    bind("127.0.0.1", port).close()  # the socket was closed


def test_concurrent_clients_get_only_correct_answers(service, client, queries_dir):
    """8 threads × 25 requests (uploads, id searches, neighbours, images) against a real uvicorn server."""
    uploads = sorted(queries_dir.rglob("*.png"))[:4]
    expected_uploads = {p: client.post("/search", **upload(p, k="5")).json() for p in uploads}
    ids = [3, 27, 51, 88]
    expected_ids = {i: client.get(f"/items/{i}/neighbours", params={"k": 5}).json() for i in ids}
    images = {i: Path(service.gallery.paths[i]).read_bytes() for i in ids}

    def worker(seed: int, url: str) -> list[str]:
        problems = []
        with httpx.Client(base_url=url, timeout=30) as http:
            for n in range(25):
                kind = (seed + n) % 4
                if kind == 0:
                    path = uploads[(seed + n) % len(uploads)]
                    got = http.post("/search", **upload(path, k="5"))
                    want = expected_uploads[path]
                elif kind == 1:
                    i = ids[(seed * 7 + n) % len(ids)]
                    got, want = http.post("/search", json={"id": i, "k": 5}), expected_ids[i]
                elif kind == 2:
                    i = ids[(seed + 3 * n) % len(ids)]
                    got, want = http.get(f"/items/{i}/neighbours", params={"k": 5}), expected_ids[i]
                else:
                    i = ids[(seed + n) % len(ids)]
                    got = http.get(f"/items/{i}")
                    if got.status_code != 200 or got.content != images[i]:
                        problems.append(f"image {i}: {got.status_code}")
                    continue
                if got.status_code != 200 or got.json() != want:
                    problems.append(f"{kind}: {got.status_code} {got.text[:100]}")
        return problems

    with live_server(create_app(service)) as url, ThreadPoolExecutor(8) as pool:
        problems = [p for found in pool.map(worker, range(8), [url] * 8) for p in found]
    assert problems == []
