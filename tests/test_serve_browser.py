"""simlearn-serve's page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium), served
as the one command after training serves it (a checkpoint, its test split as the gallery, thumbnails rendered from
the digits' pixels): upload a digit, see k results, browse from a result to its neighbours, click a point of the map,
go back; the page with an access token; the API page (Swagger UI) rendered with nothing from the network. No browser
is downloaded: the test fails, not skips, when Chromium is missing (.ci/run installs it)."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from simlearn.retrieval import Gallery
from simlearn.serve import SearchService, ServiceLimits, create_app, open_service

from .serving import TOKEN, live_server, serve_config, write_digit_gallery

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
K = 6
#: set to a path to keep the screenshot of the page with results (docs/serve.png is made this way)
SCREENSHOT_ENV = "SIMLEARN_SERVE_SCREENSHOT"


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, (
        f"the page test needs Debian's Chromium and its driver, missing: {missing}; install them with "
        f"`apt-get install -y chromium chromium-driver` (.ci/run does)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,1000",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_service(trained_run, tmp_path_factory) -> tuple[SearchService, Path]:
    """The service of ``simlearn-serve ckpt_path=<run>/checkpoints/last.ckpt`` (no gallery: the test split), k=6."""
    root = tmp_path_factory.mktemp("serve_page")
    query = write_digit_gallery(root / "queries", per_class=1, offset=40)[7]  # a 7
    service = open_service(serve_config(trained_run / "checkpoints" / "last.ckpt", None, root / "cache"))
    limited = SearchService(
        service.model,
        service.gallery,
        ServiceLimits(k=K),
        images=service.images,
        source=service.source,
    )
    return limited, query


def wait_for(driver, condition, what: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def shown_ids(driver) -> list[int]:
    # read in one script: the page may replace the cards between finding them and reading each one (a stale element)
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#results .card'), card => Number(card.dataset.id))"
    )


def query_id(driver) -> str:
    return driver.find_element("id", "query").get_attribute("data-id") or ""


def images_loaded(driver) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results img, #query img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def test_upload_browse_and_map_in_a_real_browser(browser, page_service, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    service, query = page_service
    with live_server(create_app(service)) as url:
        api = httpx.Client(base_url=url, timeout=30)
        browser.get(url + "/")
        wait_for(browser, lambda d: "gallery items" in d.find_element(By.ID, "about").text, "the page's gallery info")
        wait_for(browser, lambda d: d.find_element(By.ID, "map-note").text, "the map")
        assert browser.find_element(By.ID, "hint").text.startswith("Drop an image")
        assert browser.find_element(By.ID, "k").get_attribute("value") == str(K)

        # upload a digit: k results, those of the API, in its order
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait_for(browser, lambda d: len(shown_ids(d)) == K, f"{K} results of the upload")
        expected = api.post("/search", files={"image": (query.name, query.read_bytes(), "image/png")}).json()
        assert shown_ids(browser) == [r["id"] for r in expected["results"]]
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
        assert f"{expected['results'][0]['cosine']:.3f}" in cards[0].text and "°" in cards[0].text

        # click a result: its neighbours, framed same label / other label
        chosen = expected["results"][2]["id"]
        cards[2].click()
        wait_for(browser, lambda d: query_id(d) == str(chosen), "the clicked result as the query")
        neighbours = api.get(f"/items/{chosen}/neighbours", params={"k": K}).json()["results"]
        wait_for(browser, lambda d: shown_ids(d) == [r["id"] for r in neighbours], "the neighbours of the result")
        frames = [
            ("same" if "same" in c.get_attribute("class") else "other" if "other" in c.get_attribute("class") else None)
            for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")
        ]
        assert frames == [{True: "same", False: "other", None: None}[r["same_class"]] for r in neighbours]
        wait_for(browser, images_loaded, "the thumbnails")
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('#results img')].map(img => [img.naturalWidth, img.naturalHeight])"
        )
        assert sizes == [[64, 64]] * K  # the 8 × 8 digits, rendered from their pixels and scaled up
        browser.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(tmp_path / "serve.png", os.environ[SCREENSHOT_ENV])

        # click a point of the map: the item drawn farthest from any other, so that the click names it alone
        target = _isolated_item(browser)
        canvas = browser.find_element(By.ID, "map")
        position = browser.execute_script("return window.simlearn.pointPosition(arguments[0])", target)
        size = canvas.size
        ActionChains(browser).move_to_element_with_offset(
            canvas, round(position["x"] - size["width"] / 2), round(position["y"] - size["height"] / 2)
        ).click().perform()
        wait_for(browser, lambda d: query_id(d) == str(target), f"item {target} from the map")
        neighbours = api.get(f"/items/{target}/neighbours", params={"k": K}).json()["results"]
        wait_for(browser, lambda d: shown_ids(d) == [r["id"] for r in neighbours], "the neighbours of the map point")

        # Back: the previous query again
        browser.find_element(By.ID, "back").click()
        wait_for(browser, lambda d: query_id(d) == str(chosen), "the previous query after Back")
        # a file that is not an image: one line on the page, and the page goes on working
        not_image = tmp_path / "notes.png"
        not_image.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(not_image))
        status = browser.find_element(By.ID, "status")
        wait_for(browser, lambda d: "not an image" in status.text, "the error line")
        assert "error" in status.get_attribute("class")
        # no script error on the way (refused requests are logged by the browser as failed resources)
        errors = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "Failed to load" not in e["message"]
        ]
        assert errors == []


def _isolated_item(browser) -> int:
    points = browser.execute_script(
        "const m = window.simlearn.state.map; return m.ids.map((id, i) => [id, m.px[i], m.py[i]]);"
    )
    xy = np.array([p[1:] for p in points])
    distances = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(distances, math.inf)
    best = int(distances.min(axis=1).argmax())
    assert distances[best].min() > 3, "no map point is clear of the others"
    return int(points[best][0])


def test_the_page_with_an_access_token(browser, page_service):
    """?token= is taken (and dropped from the address bar), sent on every call, images included; without it the
    page asks for the token."""
    from selenium.webdriver.common.by import By

    service, query = page_service
    with live_server(create_app(service, auth_token=TOKEN)) as url:
        browser.get(url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(url + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "token-box").is_displayed(), "the token prompt")
        browser.get(f"{url}/?token={TOKEN}")
        wait_for(browser, lambda d: "gallery items" in d.find_element(By.ID, "about").text, "the gallery info")
        assert "token" not in browser.current_url
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait_for(browser, lambda d: len(shown_ids(d)) == K, "the results with the token")
        wait_for(browser, images_loaded, "the thumbnails fetched with the token")
        browser.execute_script("sessionStorage.clear()")


def test_the_api_page_renders_without_network(browser, page_service):
    """/docs: Swagger UI drawn from the files the service itself serves; every resource the page loaded came from the
    service, and the browser logged no error (a blocked or missing script would)."""
    from selenium.webdriver.common.by import By

    service, _ = page_service
    with live_server(create_app(service)) as url:
        browser.get_log("browser")  # forget earlier pages' entries
        browser.get(url + "/docs")
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 6, "the API's operations")
        assert "simlearn-serve" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(name.endswith("/openapi.json") for name in loaded)
        assert loaded and all(name.startswith(url + "/") for name in loaded), loaded
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def _top(driver, selector: str) -> float:
    return driver.execute_script(f"return document.querySelector('{selector}').getBoundingClientRect().top")


def _set_k(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "k")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(*([text] if text else []), Keys.TAB)  # TAB: the change event, as a user leaving the box


def test_a_bad_k_or_image_is_one_line_that_moves_nothing(browser, page_service, tmp_path):
    """k empty, 0 or past max_k: one error line, no search, the box back to the k of the results shown (which stay);
    a refused upload: a line that names no Python class; neither line moves the page (the status keeps its room,
    also on a narrow window where the line wraps)."""
    from selenium.webdriver.common.by import By

    service, query = page_service
    browser.set_window_size(800, 1000)
    try:
        with live_server(create_app(service)) as url:
            browser.get(url + "/")
            wait_for(browser, lambda d: "gallery items" in d.find_element(By.ID, "about").text, "the gallery info")
            browser.find_element(By.ID, "file").send_keys(str(query))
            wait_for(browser, lambda d: len(shown_ids(d)) == K, f"{K} results of the upload")
            shown, top = shown_ids(browser), _top(browser, "main")
            status = browser.find_element(By.ID, "status")
            for typed, expected in (("", "k is empty"), ("0", "from 1 to"), (str(service.max_k() + 1), "from 1 to")):
                _set_k(browser, typed)
                wait_for(browser, lambda d, e=expected: e in status.text, f"the refusal of k={typed!r}")
                assert "error" in status.get_attribute("class")
                assert browser.find_element(By.ID, "k").get_attribute("value") == str(K), typed
                assert shown_ids(browser) == shown and _top(browser, "main") == top, typed
            _set_k(browser, "3")  # a valid k searches again
            wait_for(browser, lambda d: len(shown_ids(d)) == 3, "3 results")
            not_image = tmp_path / "notes.png"
            not_image.write_text("not an image")
            browser.find_element(By.ID, "file").send_keys(str(not_image))
            wait_for(browser, lambda d: "not an image" in status.text, "the error line")
            assert not re.search(r"[A-Z][a-z]+(Error|Exception)\b", status.text), status.text
            assert browser.find_element(By.ID, "k").get_attribute("value") == "3"
            assert _top(browser, "main") == top
    finally:
        browser.set_window_size(1360, 1000)


def test_long_names_are_cut_in_the_middle(browser, page_service):
    """A result's name too long for its card keeps its start and its end (what tells files apart), the whole name in
    its tooltip."""
    from selenium.webdriver.common.by import By

    service, query = page_service
    names = [f"holiday-photos-2026/camera-roll/IMG_{i:05d}.png" for i in range(service.size)]
    gallery = Gallery(service.gallery.embeddings, service.gallery.labels, None, service.gallery.source, None, ids=names)
    named = SearchService(service.model, gallery, ServiceLimits(k=K), images=service.images, source="long names")
    with live_server(create_app(named)) as url:
        browser.get(url + "/")
        wait_for(browser, lambda d: "gallery items" in d.find_element(By.ID, "about").text, "the gallery info")
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait_for(browser, lambda d: len(shown_ids(d)) == K, f"{K} results")
        for card in browser.find_elements(By.CSS_SELECTOR, "#results .card"):
            name = card.find_element(By.CSS_SELECTOR, ".name")
            full = names[int(card.get_attribute("data-id"))]
            assert name.get_attribute("title") == full
            start, _, end = name.text.partition("…")
            number = full.rsplit("_", 1)[1]  # 00017.png: what tells these files apart
            assert _ == "…" and full.startswith(start) and full.endswith(end) and end.endswith(number), name.text
            assert len(start) >= 4, name.text
            width = browser.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", name)
            assert width[0] <= width[1], (name.text, width)  # all of it is shown: nothing cut off at the end


def test_the_api_page_has_an_authorize_button_with_a_token(browser, page_service):
    """With a token, Swagger UI offers Authorize (the bearer scheme is declared), so "Try it out" can send it."""
    from selenium.webdriver.common.by import By

    service, _ = page_service
    with live_server(create_app(service, auth_token=TOKEN)) as url:
        browser.get(url + "/docs")
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 6, "the API's operations")
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")
        browser.find_element(By.CSS_SELECTOR, ".btn.authorize").click()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".auth-container input"), "the token field")


#: where the views' screenshots are kept (serve_clusters.png, serve_duplicates.png, serve_map.png): test artefacts
ARTEFACTS_ENV = "SIMLEARN_TEST_ARTEFACTS"


def artefacts_dir() -> Path:
    folder = Path(os.environ.get(ARTEFACTS_ENV) or Path(__file__).parent / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def organised_service(trained_run, tmp_path_factory) -> tuple[SearchService, list[int]]:
    """``simlearn-serve gallery=FOLDER organise.k=5``: 5 digits of each class as PNG files, one of them a second
    time under another name (a planted near-duplicate: cos 1); the ids of the planted pair."""
    root = tmp_path_factory.mktemp("serve_views")
    written = write_digit_gallery(root / "gallery", per_class=5)
    source = written[12]  # a 2
    shutil.copyfile(source, source.with_name(f"copy-of-{source.name}"))
    cfg = serve_config(trained_run / "checkpoints" / "last.ckpt", root / "gallery", root / "cache", "organise.k=5")
    service = open_service(cfg)
    names = [service.gallery.name(i) for i in range(service.size)]
    planted = sorted(i for i, name in enumerate(names) if Path(name).name in (source.name, f"copy-of-{source.name}"))
    assert len(planted) == 2
    return service, planted


def _images_loaded(driver, selector: str) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0)",
        selector,
    )


def _ids(driver, selector: str) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), card => Number(card.dataset.id))", selector
    )


@pytest.mark.slow
def test_the_clusters_and_duplicates_views_and_the_map_by_cluster(browser, organised_service):
    """Click a cluster: its items, nearest the centre first, with their images; click Duplicates: the planted pair
    as a group, its first item marked to keep; the map coloured by cluster. The screenshots are kept as test
    artefacts (serve_clusters.png, serve_duplicates.png, serve_map.png in $SIMLEARN_TEST_ARTEFACTS)."""
    from selenium.webdriver.common.by import By

    service, planted = organised_service
    artefacts = artefacts_dir()
    with live_server(create_app(service)) as url:
        api = httpx.Client(base_url=url, timeout=60)
        browser.get(url + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "map-note").text, "the map", timeout=60)
        assert browser.find_element(By.ID, "map-note").text.startswith(f"t-SNE of {service.size} items")

        # Clusters: the list, then a click on one of them shows its items, as GET /clusters/{c} orders them
        browser.find_element(By.ID, "tab-clusters").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cluster-list .cluster")) == 5, "5 clusters")
        summary = api.get("/clusters").json()
        entries = browser.find_elements(By.CSS_SELECTOR, "#cluster-list .cluster")
        assert [int(e.get_attribute("data-cluster")) for e in entries] == [
            row["cluster"] for row in summary["clusters"]
        ]
        assert f"{summary['clusters'][1]['size']} items" in entries[1].text
        wait_for(browser, lambda d: _images_loaded(d, "#cluster-list img"), "the clusters' thumbnails")
        entries[1].click()
        c = summary["clusters"][1]["cluster"]
        expected = [r["id"] for r in api.get(f"/clusters/{c}").json()["items"]]
        wait_for(browser, lambda d: _ids(d, "#cluster-items .card") == expected, f"the items of cluster {c}")
        wait_for(browser, lambda d: _images_loaded(d, "#cluster-items img"), "the cluster's images")
        assert browser.find_element(By.ID, "cluster-title").text.startswith(f"Cluster {c}: {len(expected)} items")
        browser.save_screenshot(str(artefacts / "serve_clusters.png"))

        # Duplicates: the planted pair is a group, its first item kept
        browser.find_element(By.ID, "tab-duplicates").click()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#duplicate-groups .group"), "the groups")
        groups = api.get("/duplicates").json()["groups"]
        rows = browser.find_elements(By.CSS_SELECTOR, "#duplicate-groups .group")
        assert len(rows) == len(groups)
        shown = [[int(c.get_attribute("data-id")) for c in r.find_elements(By.CSS_SELECTOR, ".card")] for r in rows]
        assert shown == [[item["id"] for item in g["items"]] for g in groups] and planted in shown
        row = rows[shown.index(planted)]
        kept = [("keep" in c.get_attribute("class")) for c in row.find_elements(By.CSS_SELECTOR, ".card")]
        assert kept == [True, False] and "keep" in row.find_elements(By.CSS_SELECTOR, ".card")[0].text
        wait_for(browser, lambda d: _images_loaded(d, "#duplicate-groups img"), "the groups' images")
        assert "cos 1.0000" in row.text
        browser.save_screenshot(str(artefacts / "serve_duplicates.png"))

        # a click on a group's item searches from it (back to the search view)
        row.find_elements(By.CSS_SELECTOR, ".card")[1].click()
        wait_for(browser, lambda d: query_id(d) == str(planted[1]), "the copy as the query")
        assert browser.find_element(By.ID, "view-search").is_displayed()

        # the map coloured by cluster: a point drawn in its cluster's colour, the legend naming the clusters
        browser.find_element(By.CSS_SELECTOR, 'input[name="colour"][value="cluster"]').click()
        wait_for(browser, lambda d: "cluster 0" in d.find_element(By.ID, "map-legend").text, "the clusters' legend")
        target = _isolated_item(browser)
        colours = browser.execute_script(
            "const m = window.simlearn.state.map, p = window.simlearn.pointPosition(arguments[0]);"
            "const i = m.row.get(arguments[0]);"
            "const px = document.getElementById('map').getContext('2d')"
            "  .getImageData(Math.round(p.x), Math.round(p.y), 1, 1).data;"
            "return [Array.from(px.slice(0, 3)), m.clusters[i]];",
            target,
        )
        palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
        assert colours[0] == [int(palette[colours[1]][k : k + 2], 16) for k in (1, 3, 5)]
        assert colours[1] == service.organised().clusters.cluster[target]
        browser.save_screenshot(str(artefacts / "serve_map.png"))
        errors = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "Failed to load" not in e["message"]
        ]
        assert errors == []
