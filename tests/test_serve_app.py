"""simlearn-serve's HTTP API (simlearn/serve/app.py) in-process through FastAPI's TestClient: the routes, the API page
without network, bad input as one-line 4xx, upload limits, item paths and the token. (The shared galleries and services
are fixtures of tests/conftest.py; the real command is tests/test_serve_command.py.)"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from simlearn.inference.search import load_queries
from simlearn.retrieval import Gallery, run_search
from simlearn.serve import SearchService, ServiceLimits, create_app, open_service
from simlearn.serve.app import DOCS_ASSETS
from simlearn.serve.views import GalleryViews, MapOptions

from .serving import (
    PER_CLASS,
    TOKEN,
    brute_force,
    live_server,
    one_line_error,
    png_bytes,
    serve_config,
    upload,
)

# ---------------------------------------------------------------- the routes


def test_health_info_and_page(client, service):
    assert client.get("/health").json() == {"status": "ok", "items": 10 * PER_CLASS}
    info = client.get("/info").json()
    assert info["gallery"]["items"] == 10 * PER_CLASS
    assert info["gallery"]["classes"] == [str(d) for d in range(10)]
    assert info["gallery"]["skipped"] == 1  # broken.png
    assert info["gallery"]["has_images"] and info["gallery"]["has_labels"]
    assert info["k"] == 10 and info["max_k"] == 100
    page = client.get("/")
    assert page.status_code == 200 and "<title>simlearn search</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    # the page loads nothing from elsewhere (it must work offline)
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/items/{item_id}", "/items/{item_id}/neighbours", "/map", "/health"} <= set(paths)
    assert {"/clusters", "/clusters/{cluster}", "/duplicates"} <= set(paths)


def test_search_by_upload_is_the_exact_search(client, service, queries_dir):
    """An uploaded image gets the top k of simlearn-search's own search (load_queries + run_search), with angles."""
    query = sorted(queries_dir.rglob("*.png"))[3]
    answer = client.post("/search", **upload(query, k="7")).json()
    queries = load_queries(query, service.model, service.gallery.classes)
    found = run_search(queries.embeddings, service.gallery, 7)
    cos, idx = found.cosines, found.indices
    assert [r["id"] for r in answer["results"]] == idx[0].tolist()
    assert [r["rank"] for r in answer["results"]] == list(range(1, 8))
    np.testing.assert_allclose([r["cosine"] for r in answer["results"]], cos[0], atol=1e-6)
    np.testing.assert_allclose(
        [r["angle_deg"] for r in answer["results"]], np.degrees(np.arccos(np.clip(cos[0], -1, 1))), atol=1e-3
    )
    first = answer["results"][0]
    assert first["class_name"] == service.gallery.labels[first["id"]]
    assert first["path"] == first["name"] == service.gallery.name(first["id"]) and not Path(first["path"]).is_absolute()
    assert first["image"] == f"/items/{first['id']}" and first["same_class"] is None  # an upload has no label
    # with the query's label given, each result says whether it has the same one
    labelled = client.post("/search", **upload(query, k="7", class_name="3")).json()["results"]
    assert [r["same_class"] for r in labelled] == [r["class_name"] == "3" for r in labelled]


def test_a_gallery_image_uploaded_finds_itself(client, service, gallery_dir):
    i = 42
    path = Path(service.gallery.paths[i])
    results = client.post("/search", **upload(path, k="3")).json()["results"]
    assert results[0]["id"] == i and results[0]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_search_by_id_json_form_and_neighbours_agree(client, service):
    i = 17
    by_json = client.post("/search", json={"id": i, "k": 6}).json()
    by_form = client.post("/search", data={"id": str(i), "k": "6"}).json()
    by_get = client.get(f"/items/{i}/neighbours", params={"k": 6}).json()
    assert by_json == by_form == by_get
    assert by_json["query"] == {
        "id": i,
        "name": service.gallery.name(i),
        "class_name": service.gallery.labels[i],
        "image": f"/items/{i}",
        "fields": None,  # a folder gallery has labels but no label fields
    }
    ids, cos = brute_force(service.gallery.embeddings, service.gallery.embeddings[i], 6, exclude=i)
    assert [r["id"] for r in by_json["results"]] == ids  # the item itself is left out
    np.testing.assert_allclose([r["cosine"] for r in by_json["results"]], cos, atol=1e-6)
    labels = service.gallery.labels
    assert [r["same_class"] for r in by_json["results"]] == [labels[j] == labels[i] for j in ids]
    # k defaults to the service's k
    assert len(client.get(f"/items/{i}/neighbours").json()["results"]) == 10


def test_item_image_is_the_gallery_file(client, service):
    for i in (0, 55, 10 * PER_CLASS - 1):
        response = client.get(f"/items/{i}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content == Path(service.gallery.paths[i]).read_bytes()


def test_map_is_a_tsne_with_labels_and_clusters_computed_once(client, service):
    answer = client.get("/map").json()
    e = service.gallery.embeddings
    assert answer["projection"].startswith("t-SNE") and answer["total"] == answer["shown"] == len(e)
    assert answer["ids"] == list(range(len(e)))
    assert [answer["classes"][c] for c in answer["labels"]] == service.gallery.labels
    # each point's cluster, simlearn-organise's
    assert answer["clusters"] == service.organised().clusters.cluster.tolist() and answer["cluster_count"] == 10
    assert service.map() == service.map() and service.views.map() is service.views.map()  # computed once
    # map.projection=pca: the first two principal components (tests/test_serve_views.py checks them)
    pca = SearchService(service.model, service.gallery, views=GalleryViews(service.gallery, None, MapOptions("pca")))
    assert pca.map()["projection"].startswith("PCA") and len(pca.map()["explained_variance_ratio"]) == 2


def planted_service(service: SearchService) -> SearchService:
    """The folder gallery with item 5's file a second time, as the last item: a near-duplicate group (5, last)."""
    g = service.gallery
    gallery = Gallery(
        np.concatenate([g.embeddings, g.embeddings[5:6]]),
        [*g.labels, g.labels[5]],
        [*g.paths, g.paths[5]],
        g.source,
        None,
        root=g.root,
    )
    return SearchService(service.model, gallery, views=GalleryViews(gallery, {"k": 10}))


def test_clusters_are_simlearn_organises_with_their_items_nearest_the_centre_first(client, service):
    found = service.organised()
    summary = client.get("/clusters").json()
    assert summary["method"] == "kmeans" and summary["k"] == 10 and summary["noise"] == 0
    assert summary["items"] == len(service.gallery.embeddings)
    assert summary["nmi"] == pytest.approx(found.clusters.metrics["nmi"], abs=1e-6) and "ami" in summary
    sizes = [row["size"] for row in summary["clusters"]]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == summary["items"]
    labels = np.array(service.gallery.labels)
    for row in summary["clusters"]:
        members = np.flatnonzero(found.clusters.cluster == row["cluster"])
        assert row["size"] == len(members) and sum(row["labels"].values()) == len(members)
        assert row["labels"] == dict(zip(*np.unique(labels[members], return_counts=True), strict=True))
    # a cluster's items: search results (the same fields, image URLs), by cosine to its centre, most similar first
    c = summary["clusters"][0]["cluster"]
    page = client.get(f"/clusters/{c}").json()
    members = np.flatnonzero(found.clusters.cluster == c)
    assert page["size"] == len(members) and sorted(r["id"] for r in page["items"]) == sorted(members.tolist())
    centre = found.clusters.centres[c].astype(np.float64)
    e = service.gallery.embeddings.astype(np.float64)
    cosines = [r["cosine"] for r in page["items"]]
    np.testing.assert_allclose(cosines, [e[r["id"]] @ centre / np.linalg.norm(e[r["id"]]) for r in page["items"]],
                               atol=1e-6)  # fmt: skip
    assert cosines == sorted(cosines, reverse=True) and [r["rank"] for r in page["items"]] == list(
        range(1, 1 + len(members))
    )
    result = client.get("/items/0/neighbours", params={"k": 2}).json()["results"][0]
    assert set(page["items"][0]) == set(result)
    first = page["items"][0]
    assert first["image"] == f"/items/{first['id']}" and first["class_name"] == service.gallery.labels[first["id"]]
    assert [p["id"] for p in summary["clusters"][0]["preview"]] == [r["id"] for r in page["items"][:6]]
    # paged: offset and limit cut the same list
    part = client.get(f"/clusters/{c}", params={"offset": 2, "limit": 3}).json()
    assert part["items"] == page["items"][2:5] and part["offset"] == 2 and part["limit"] == 3


def test_duplicate_groups_name_the_planted_copy_and_the_item_to_keep(service):
    planted = planted_service(service)
    last = len(planted.gallery.embeddings) - 1
    answer = TestClient(create_app(planted)).get("/duplicates").json()
    assert answer["threshold"] == 0.999 and answer["exact"] is True and answer["method"].startswith("exact")
    groups = [[r["id"] for r in g["items"]] for g in answer["groups"]]
    assert [5, last] in groups and answer["groups_total"] == len(groups)
    group = answer["groups"][groups.index([5, last])]
    assert [r["keep"] for r in group["items"]] == [True, False] and group["size"] == 2
    assert group["items"][1]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert group["items"][1]["image"] == f"/items/{last}" and group["items"][1]["name"] == planted.gallery.name(5)
    assert answer["to_remove"] == answer["items_in_groups"] - answer["groups_total"]
    assert TestClient(create_app(planted)).get("/duplicates", params={"offset": len(groups)}).json()["groups"] == []


@pytest.mark.parametrize(
    ("path", "params", "status", "expected"),
    [
        ("/clusters/10", {}, 404, "no cluster '10': clusters are the integers 0 to 9"),
        ("/clusters/-1", {}, 404, "no cluster '-1'"),
        ("/clusters/two", {}, 404, "no cluster 'two'"),
        ("/clusters/0", {"offset": "-1"}, 400, "offset must be an integer 0 or more"),
        ("/clusters/0", {"limit": "0"}, 400, "limit must be an integer from 1 to 100"),
        ("/duplicates", {"limit": "101"}, 400, "limit must be an integer from 1 to 100"),
        ("/duplicates", {"offset": "1.5"}, 400, "offset must be an integer 0 or more"),
    ],
)
def test_bad_view_requests_are_one_line(client, path, params, status, expected):
    assert expected in one_line_error(client.get(path, params=params), status)


# ---------------------------------------------------------------- the API page without network


def test_the_api_page_loads_nothing_from_elsewhere(service, client):
    """/docs is Swagger UI with its script, style and icon served by the service (fastapi-offline's copy of
    swagger-ui-dist 5, which renders OpenAPI 3.1), also without the token; the page references no other host."""
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3 and all(a.startswith(DOCS_ASSETS + "/") for a in assets)
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png"}
    guarded = TestClient(create_app(service, auth_token=TOKEN))
    for asset in assets:
        for tried in (client, guarded):
            response = tried.get(asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
            assert kinds[asset.rsplit(".", 1)[1]] in response.headers["content-type"]
    assert "SwaggerUIBundle" in client.get(f"{DOCS_ASSETS}/swagger-ui-bundle.js").text
    assert guarded.get("/docs").status_code == 200 and guarded.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert client.get(f"{DOCS_ASSETS}/../app.py").status_code == 404


# ---------------------------------------------------------------- bad input: 4xx with one line, and serving goes on


JSON_TYPE = {"content-type": "application/json"}
#: a PNG whose header is whole and whose pixels are cut off
TRUNCATED_PNG = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))[:120]

BAD_REQUESTS = [
    ("not an image", {"files": {"image": ("x.png", b"GIF89a but not really", "image/png")}}, 415),
    ("empty upload", {"files": {"image": ("x.png", b"", "image/png")}}, 400),
    ("truncated PNG", {"files": {"image": ("x.png", TRUNCATED_PNG, "image/png")}}, 415),
    # Pillow would hand an EPS file to Ghostscript: only formats Pillow decodes itself are taken
    ("EPS", {"files": {"image": ("x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "image/eps")}}, 415),
    ("image as text", {"data": {"image": "not a file"}}, 400),
    ("k zero", {"json": {"id": 3, "k": 0}}, 400),
    ("k negative", {"json": {"id": 3, "k": -2}}, 400),
    ("k too large", {"json": {"id": 3, "k": 101}}, 400),
    ("k not a number", {"data": {"id": "3", "k": "ten"}}, 400),
    ("k a float", {"json": {"id": 3, "k": 2.5}}, 400),
    ("k a bool", {"json": {"id": 3, "k": True}}, 400),
    ("unknown id", {"json": {"id": 10 * PER_CLASS}}, 404),
    ("negative id", {"json": {"id": -1}}, 404),
    ("id a path", {"json": {"id": "../../etc/passwd"}}, 404),
    ("id and image", {"files": {"image": ("x.png", b"x", "image/png")}, "data": {"id": "3"}}, 400),
    ("nothing", {"json": {}}, 400),
    ("broken JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ("JSON list", {"json": [1, 2]}, 400),
    ("other content type", {"content": b"id=3", "headers": {"content-type": "text/plain"}}, 400),
    # 1,100 nested arrays (2.2 KB): Python's JSON parser gives up with a RecursionError
    ("JSON nested deep", {"content": b'{"id": ' + b"[" * 1100 + b"]" * 1100 + b"}", "headers": JSON_TYPE}, 400),
    ("id a bool", {"json": {"id": True}}, 400),
    ("id a list", {"json": {"id": [[3]]}}, 400),
    ("id a float", {"json": {"id": 2.5}}, 400),
]


@pytest.mark.parametrize(("why", "request_args", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_search_requests_are_one_line_4xx(client, why, request_args, status):
    one_line_error(client.post("/search", **request_args), status)


def test_bad_item_requests_and_the_service_keeps_serving(client, service):
    n = 10 * PER_CLASS
    assert "0 to 99" in one_line_error(client.get(f"/items/{n}"), 404)
    one_line_error(client.get("/items/abc"), 404)
    one_line_error(client.get(f"/items/{n}/neighbours"), 404)
    for k in ("0", "101", "-1", "x", "1e3", "2.0"):
        one_line_error(client.get("/items/3/neighbours", params={"k": k}), 400)
    one_line_error(client.get("/no/such/route"), 404)
    one_line_error(client.delete("/items/3"), 405)
    # k=N-1 is the most a gallery item can have (itself left out) when the gallery is smaller than max_k
    small = TestClient(create_app(SearchService(service.model, service.gallery, ServiceLimits(max_k=500))))
    assert len(small.get("/items/3/neighbours", params={"k": n - 1}).json()["results"]) == n - 1
    one_line_error(small.get("/items/3/neighbours", params={"k": n}), 400)
    one_line_error(small.post("/search", json={"id": 3, "k": n}), 400)
    # after all that, it still answers
    assert client.get("/health").json()["status"] == "ok"
    assert len(client.post("/search", json={"id": 3, "k": 2}).json()["results"]) == 2


def test_oversized_uploads_are_refused_before_and_while_reading(service, queries_dir):
    limits = ServiceLimits(max_upload_mb=0.05)  # 52 KB
    small = TestClient(create_app(SearchService(service.model, service.gallery, limits)))
    big = b"\x89PNG" + os.urandom(200_000)
    assert "max_upload_mb" in one_line_error(small.post("/search", files={"image": ("big.png", big, "image/png")}), 413)

    def chunks():  # no Content-Length: counted while it is read
        for _ in range(50):
            yield b"x" * 10_000

    response = small.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    one_line_error(response, 413)
    # a small file of many pixels is refused before it is decoded
    few_pixels = TestClient(
        create_app(SearchService(service.model, service.gallery, ServiceLimits(max_image_megapixels=0.001)))
    )
    query = sorted(queries_dir.rglob("*.png"))[0]
    large = png_bytes(Image.new("L", (64, 64)))
    assert "pixels" in one_line_error(few_pixels.post("/search", files={"image": ("big.png", large, "image/png")}), 413)
    assert few_pixels.post("/search", **upload(query, k="2")).status_code == 200  # 8 × 8 pixels
    # an image under the limit is still searched
    query = sorted(queries_dir.rglob("*.png"))[0]
    assert small.post("/search", **upload(query, k="2")).status_code == 200


def _png_header(width: int, height: int) -> bytes:
    """A PNG of ``width`` × ``height`` single-colour grey pixels as a tiny file: its header, one IDAT chunk of the
    first rows (a decoder would need the rest) and IEND; only the header is read before the pixels are counted."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress(b"\0" + b"\x80" * width) if width < 10**6 else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_too_many_pixels_is_413_also_past_pillows_bomb_limit(client):
    """A 20000 × 20000 PNG is past Pillow's own decompression-bomb limit (which raises where the 100000 × 600 one is
    only over ours): both are the same 413 with the megapixel limit, not a 415 'not an image'."""
    for width, height in ((20000, 20000), (100000, 600)):
        response = client.post("/search", files={"image": ("big.png", _png_header(width, height), "image/png")})
        detail = one_line_error(response, 413)
        assert "max_image_megapixels=50" in detail and "Error" not in detail, detail
    assert "400 million pixels" in one_line_error(
        client.post("/search", files={"image": ("b.png", _png_header(20000, 20000), "image/png")}), 413
    )


def test_messages_name_what_the_client_sent(client, service):
    """JSON true is shown as true (not Python's True), a wrong type as a wrong type; a JSON body over the size limit
    is not told to send a smaller image; no message names a Python exception class."""
    for body, expected in (
        ({"id": True}, "got true"),
        ({"id": [[3]]}, "got [[3]]"),
        ({"id": None, "k": 3}, "nothing to search with"),
        ({"id": 3, "k": True}, "got true"),
        ({"id": 3, "k": [5]}, "got [5]"),
    ):
        detail = one_line_error(client.post("/search", json=body), 400)
        assert expected in detail and "True" not in detail, detail
    small = TestClient(create_app(SearchService(service.model, service.gallery, ServiceLimits(max_upload_mb=0.01))))
    detail = one_line_error(small.post("/search", json={"id": 3, "pad": "x" * 100_000}), 413)
    assert "image" not in detail and '{"id": 3' in detail, detail
    detail = one_line_error(small.post("/search", files={"image": ("a.png", b"x" * 100_000, "image/png")}), 413)
    assert "smaller image" in detail
    detail = one_line_error(client.post("/search", files={"image": ("x.png", b"not an image", "image/png")}), 415)
    assert not re.search(r"[A-Z][a-z]+(Error|Exception)", detail), detail
    detail = one_line_error(client.post("/search", data={"id": "3"}, files={"k": ("k.txt", b"5", "text/plain")}), 400)
    assert "got a file" in detail, detail


def test_a_full_decode_queue_is_answered_503(service, queries_dir):
    """max_decodes + max_waiting_uploads uploads in progress: one more is 503 with one line and Retry-After; id
    searches are not queued; once a place is free, uploads are searched again."""
    busy = SearchService(service.model, service.gallery, ServiceLimits(max_decodes=1, max_waiting_uploads=1))
    client = TestClient(create_app(busy))
    query = sorted(queries_dir.rglob("*.png"))[0]
    with busy.upload_slot(), busy.upload_slot():  # as two uploads being decoded or waiting
        response = client.post("/search", **upload(query, k="2"))
        assert "busy" in one_line_error(response, 503) and "max_waiting_uploads=1" in response.json()["detail"]
        assert response.headers["retry-after"] == "2"
        assert client.post("/search", json={"id": 3, "k": 2}).status_code == 200
    assert client.post("/search", **upload(query, k="2")).json() == service.search_upload(query.read_bytes(), 2)


def test_a_gallery_without_images_has_no_item_images(service, tmp_path):
    npz = tmp_path / "gallery.npz"
    np.savez(npz, embeddings=service.gallery.embeddings, labels=np.array(service.gallery.labels))
    cfg = serve_config(service.model.path, npz, tmp_path / "cache")
    client = TestClient(create_app(open_service(cfg)))
    assert client.get("/info").json()["gallery"]["has_images"] is False
    assert "no image" in one_line_error(client.get("/items/3"), 404)
    answer = client.post("/search", json={"id": 3, "k": 4}).json()
    assert all(r["image"] is None for r in answer["results"]) and len(answer["results"]) == 4


# ---------------------------------------------------------------- security


TRAVERSALS = [
    "/items/../secret.txt",
    "/items/../../../../../../etc/passwd",
    "/items/..%2Fsecret.txt",
    "/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/items/%2e%2e%2fsecret.txt",
    "/items/%252e%252e%252fsecret.txt",
    "/items/..%5csecret.txt",
    "/items//etc/passwd",
    "/items/%2Fetc%2Fpasswd",
    "/items/0/../../secret.txt",
    "/items/0%2F..%2F..%2Fsecret.txt",
    "/static/../../secret.txt",
    "/static/..%2F..%2F..%2Fpyproject.toml",
    "/static/%2e%2e/%2e%2e/service.py",
    "/static//etc/passwd",
    "/../secret.txt",
]


def _raw_get(url: str, target: str) -> tuple[int, bytes]:
    """A request line sent as it is (HTTP clients would normalise the ``..``)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_items_are_served_by_id_never_by_a_client_path(client, service, gallery_dir):
    """../, absolute paths and URL-encoded variants, in-process and as raw request lines to a real server."""
    secret = (gallery_dir.parent / "secret.txt").read_text()
    gallery_file = Path(service.gallery.paths[0])
    targets = [*TRAVERSALS, f"/items/{gallery_file}", f"/items/{str(gallery_file).replace('/', '%2F')}"]
    for target in targets:
        response = client.get(target)
        assert 400 <= response.status_code < 500, (target, response.status_code)
        assert secret not in response.text and b"root:" not in response.content
    # an id that names a file, also one of the gallery's own, is no id
    for item in (str(gallery_file), "../secret.txt", str(gallery_dir.parent / "secret.txt")):
        one_line_error(client.post("/search", json={"id": item}), 404)
        one_line_error(client.post("/search", data={"id": item}), 404)
    with live_server(create_app(service)) as url:
        for target in targets:
            status, body = _raw_get(url, target)
            assert 400 <= status < 500, (target, status)
            assert secret.encode() not in body and b"root:" not in body
        assert _raw_get(url, "/items/0")[0] == 200


def test_auth_token_on_every_route_but_health_and_the_page(service):
    client = TestClient(create_app(service, auth_token=TOKEN))
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    guarded = [
        ("GET", "/info", {}),
        ("GET", "/map", {}),
        ("GET", "/clusters", {}),
        ("GET", "/clusters/0", {}),
        ("GET", "/duplicates", {}),
        ("GET", "/items/0", {}),
        ("GET", "/items/0/neighbours", {}),
        ("POST", "/search", {"json": {"id": 0, "k": 2}}),
        ("GET", "/no/such/route", {}),
    ]
    refusals = [
        ({}, "needs its access token"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, "token refused"),
        ({"Authorization": TOKEN}, "must be 'Bearer <token>'"),
        ({"Authorization": "Bearer "}, "must be 'Bearer <token>'"),
    ]
    for method, path, kwargs in guarded:
        for headers, expected in refusals:
            response = client.request(method, path, headers=headers, **kwargs)
            assert expected in one_line_error(response, 401), (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
        response = client.request(method, path, headers=good, **kwargs)
        assert response.status_code == (404 if path == "/no/such/route" else 200), path
    # an oversized upload without the token is refused as unauthorised, before its size is looked at
    big = {"image": ("big.png", b"x" * (11 * 2**20), "image/png")}
    one_line_error(client.post("/search", files=big), 401)


def test_the_api_description_declares_the_bearer_token(service, client):
    """With a token, /openapi.json declares the bearer scheme (Swagger UI's Authorize button) on every route that
    needs it, not on /health; without one it declares none."""
    schema = TestClient(create_app(service, auth_token=TOKEN)).get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert [s | {"description": None} for s in schemes.values()] == [
        {"type": "http", "scheme": "bearer", "description": None}
    ]
    (name,) = schemes
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert operation.get("security") == (None if path == "/health" else [{name: []}]), path
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})
