"""``simlearn-organise`` end to end on a folder of digit PNGs with planted near-copies: the files it writes, the
planted groups it finds (precision and recall of the planted pairs), and its one-line errors."""

from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import run_cli, run_main
from .serving import planted_image_csv, write_digit_gallery
from .test_errors import assert_clean_failure

#: planted copies: the source image's name -> its copies' names (exact copies and 4 % brighter copies)
EXACT, BRIGHTER = 6, 6


def plant_copies(folder: Path, files: list[Path]) -> list[set[str]]:
    """Next to some of ``files``, an exact copy and a 4 % brighter copy under other names; return the planted
    groups (source and copies, as paths)."""
    groups = []
    for n, source in enumerate(files[::7][: EXACT + BRIGHTER]):
        pixels = np.asarray(Image.open(source), dtype=np.float64)
        if n >= EXACT:  # brightness: what a re-upload through an editor does
            pixels = np.clip(pixels * 1.04, 0, 255)
        copy = source.with_name(f"copy_{n}_{source.name}")
        Image.fromarray(pixels.round().astype(np.uint8)).save(copy)
        groups.append({str(source), str(copy)})
    return groups


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, list[set[str]]]:
    folder = tmp_path_factory.mktemp("organise") / "catalogue"
    files = write_digit_gallery(folder, per_class=12)
    return folder, plant_copies(folder, files)


def organise(capfd, ckpt: Path, gallery: Path, out: Path, *overrides: str):
    return run_main(
        "simlearn.cli.organise",
        f"ckpt_path={ckpt}",
        f"gallery={gallery}",
        f"hydra.run.dir={out}",
        f"cache_dir={out.parent / 'cache'}",
        "device=cpu",
        *overrides,
        capfd=capfd,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def planted_scores(out: Path, planted: list[set[str]]) -> tuple[float, float, dict[str, set[str]]]:
    """Precision and recall of the planted pairs among the pairs of the groups in ``out/duplicates.csv``, and the
    groups; one item kept per group."""
    found_groups: dict[str, set[str]] = {}
    keep: dict[str, str] = {}
    for row in read_csv(out / "duplicates.csv"):
        found_groups.setdefault(row["group"], set()).add(row["path"])
        if row["keep"] == "True":
            keep[row["group"]] = row["path"]
    assert set(keep) == set(found_groups)  # one item kept per group
    found_pairs = {frozenset(p) for g in found_groups.values() for p in combinations(sorted(g), 2)}
    planted_pairs = {frozenset(g) for g in planted}
    recall = len(found_pairs & planted_pairs) / len(planted_pairs)
    precision = len(found_pairs & planted_pairs) / max(1, len(found_pairs))
    print(
        f"planted pairs {len(planted_pairs)}, found {len(found_pairs)}: precision {precision:.3f} recall {recall:.3f}"
    )
    return precision, recall, found_groups


def test_organise_finds_the_planted_copies_and_writes_every_file(trained_run, catalogue, tmp_path, capfd):
    folder, planted = catalogue
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "run"
    result = organise(capfd, ckpt, folder, out, "k=10")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("clusters.csv", "clusters_summary.csv", "duplicates.csv", "outliers.csv", "organise.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "organise.json").read_text())
    items = 120 + len(planted)
    assert summary["items"] == items and summary["clusters"]["k"] == 10
    assert 0 < summary["clusters"]["nmi"] <= 1 and "ami" in summary["clusters"]
    assert summary["duplicates"]["exact"] and summary["duplicates"]["method"].startswith("exact")

    clusters = read_csv(out / "clusters.csv")
    assert len(clusters) == items and {row["cluster"] for row in clusters} == {str(c) for c in range(10)}
    sizes = [int(row["size"]) for row in read_csv(out / "clusters_summary.csv")]
    assert sum(sizes) == items and sizes == sorted(sizes, reverse=True)

    # the planted pairs against the pairs of the groups found
    precision, recall, found_groups = planted_scores(out, planted)
    assert recall == 1.0 and precision == 1.0, found_groups

    outliers = read_csv(out / "outliers.csv")
    scores = [float(row["uniqueness"]) for row in outliers]
    assert len(outliers) == items and scores == sorted(scores, reverse=True)

    sheets = sorted(p.name for p in (out / "sheets").glob("*.png"))
    assert sheets == sorted([*(f"cluster_{c}.png" for c in range(10)), "duplicates.png", "outliers.png"])
    with Image.open(out / "sheets" / "duplicates.png") as sheet:  # one row per group: taller with more groups
        assert sheet.height > 100 * min(len(found_groups), 12)


def test_hdbscan_needs_no_k_and_leaves_noise(trained_run, catalogue, tmp_path, capfd):
    folder, _ = catalogue
    out = tmp_path / "run"
    result = organise(capfd, trained_run / "checkpoints" / "last.ckpt", folder, out, "method=hdbscan", "sheets=false")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "organise.json").read_text())
    cluster_ids = {int(row["cluster"]) for row in read_csv(out / "clusters.csv")}
    assert summary["clusters"]["method"] == "hdbscan" and summary["clusters"]["k"] == len(cluster_ids - {-1})
    assert not (out / "sheets").exists()


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["k=1000"], ["k=1000", "more than the 132 items", "from 1 to 132"]),
        (["threshold=1.5"], ["threshold=1.5", "from -1 to 1"]),
        (["threshold=-2"], ["threshold=-2", "from -1 to 1"]),
        (["method=dbscan"], ["method='dbscan'", "kmeans, hdbscan"]),
        (["k=0"], ["k=0", "at least 1"]),
    ],
)
def test_bad_input_is_one_line(trained_run, catalogue, tmp_path, capfd, overrides, fragments):
    folder, _ = catalogue
    result = organise(capfd, trained_run / "checkpoints" / "last.ckpt", folder, tmp_path / "run", *overrides)
    assert_clean_failure(result, *fragments)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_empty_gallery_is_one_line(trained_run, tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = organise(capfd, trained_run / "checkpoints" / "last.ckpt", empty, tmp_path / "run")
    assert_clean_failure(result, "holds no image files")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_leaks_between_splits_of_an_image_csv_name_both_files(trained_run, tmp_path, capfd):
    """data=image_csv whose test split holds a near-copy (4 % brighter, under another name) of a training file."""
    root = tmp_path / "photos"
    # of each digit's 6 files: the first in test, the second in val, the others in train
    table, source, copy = planted_image_csv(root, 6, {0: "test", 1: "val"}, 1.04)
    out = tmp_path / "run"
    result = run_main(
        "simlearn.cli.organise",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        "data=image_csv",
        f"data.csv={table}",
        "data.channels=1",
        "data.num_workers=0",
        f"hydra.run.dir={out}",
        "device=cpu",
        "k=10",
        "sheets=false",
        capfd=capfd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = read_csv(out / "leaks.csv")
    assert [(Path(r["path"]).name, Path(r["train_path"]).name, r["split"]) for r in found] == [
        ("IMG_0001.png", source.name, "test")
    ]
    assert Path(found[0]["train_path"]) == source
    summary = json.loads((out / "organise.json").read_text())
    assert summary["leaks"]["counts"] == {"val": 0, "test": 1}
    assert summary["leaks"]["checked"] == {"val": 10, "test": 11}
    assert summary["items"] == 61 and "leaks from train: 1 of" in result.stdout  # 10 digits × 6 files + the copy


def test_a_gallery_and_data_together_is_one_line(trained_run, catalogue, tmp_path, capfd):
    folder, _ = catalogue
    result = organise(capfd, trained_run / "checkpoints" / "last.ckpt", folder, tmp_path / "run", "data=image_csv")
    assert_clean_failure(result, "gallery=", "data=", "not both")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_a_threshold_outside_minus_one_to_one_ends_the_real_process_in_one_line(tmp_path):
    """End to end, a real process: the options are checked before the model loads."""
    result = run_cli("-m", "simlearn.cli.organise", "ckpt_path=missing.ckpt", f"gallery={tmp_path}", "threshold=2",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert_clean_failure(result, "threshold=2", "from -1 to 1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the pixel embedder: no model -----------------------------------------------------------------------------------
def organise_pixels(capfd, out: Path, *overrides: str):
    return run_main(
        "simlearn.cli.organise",
        "embedder=pixels",
        f"hydra.run.dir={out}",
        f"cache_dir={out.parent / 'cache'}",
        "device=cpu",
        *overrides,
        capfd=capfd,
    )


def test_the_pixels_find_the_planted_copies_without_a_model(catalogue, tmp_path, capfd):
    folder, planted = catalogue
    out = tmp_path / "run"
    result = organise_pixels(capfd, out, f"gallery={folder}", "k=10", "sheet_clusters=2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "organise.json").read_text())
    items = 120 + len(planted)
    assert summary["items"] == items and 0 < summary["clusters"]["nmi"] <= 1
    precision, recall, groups = planted_scores(out, planted)
    assert recall == 1.0 and precision == 1.0, groups
    # the copy check samples every item (200 > 132): the items whose nearest other item is at cos ≥ 0.999 are exactly
    # the 24 of the planted pairs (genuine copies, no different digits), and 18 % > 5 % warns that the gallery is
    # mostly copies or the model merges images, in the one warning line
    check = summary["copy_check"]
    assert check["checked"] == items and check["neighbours_above_threshold"] == pytest.approx(2 * len(planted) / items)
    assert check["warns"] and "either the gallery is mostly copies or the model merges" in check["warning"]
    logged = [line for line in (result.stdout + result.stderr).splitlines() if "copy check:" in line]
    assert len(logged) == 1 and check["warning"] in logged[0]
    assert {"cluster_0.png", "duplicates.png", "outliers.png"} <= {p.name for p in (out / "sheets").glob("*.png")}


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data=digits"], ["embedder=pixels embeds image files: give gallery=FOLDER", "ckpt_path="]),
        (["gallery=GALLERY", "ckpt_path=x.ckpt"], ["uses no model, but ckpt_path=x.ckpt", "drop ckpt_path="]),
        (["gallery=GALLERY", "pixels.size=0"], ["pixels.size=0 must be a whole number", "pixels.size=32"]),
        (["gallery=GALLERY", "pixels.channels=2"], ["pixels.channels=2 must be 1 (grey) or 3 (RGB)"]),
        (["gallery=GALLERY", "embedder=clip"], ["embedder='clip' is not one of model, pixels"]),
    ],
)
def test_bad_pixel_input_is_one_line(catalogue, tmp_path, capfd, overrides, fragments):
    folder, _ = catalogue
    given = [o.replace("GALLERY", str(folder)) for o in overrides]
    result = organise_pixels(capfd, tmp_path / "run", *given)
    assert_clean_failure(result, *fragments)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "clusters.csv").exists()


def test_no_ckpt_path_without_pixels_is_one_line(catalogue, tmp_path, capfd):
    result = run_main("simlearn.cli.organise", f"gallery={catalogue[0]}", f"hydra.run.dir={tmp_path}", capfd=capfd)
    assert_clean_failure(result, "missing ckpt_path=", "embedder=pixels")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the model a gallery was embedded by ---------------------------------------------------------------------------
def other_checkpoint(ckpt: Path, out: Path) -> Path:
    """The checkpoint with one encoder weight changed: another model of the same dimension."""
    import torch

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    name = next(k for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.") and v.is_floating_point())
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 0.05
    torch.save(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def npz_galleries(trained_run, catalogue, tmp_path_factory) -> dict[str, Path]:
    """The catalogue embedded by the trained checkpoint, as simlearn-embed writes an npz (write_npz): with the
    model's digest, and as an older simlearn wrote it (no digest); a copy of the checkpoint, and another model."""
    from simlearn.data.images import find_images
    from simlearn.inference import load_model
    from simlearn.inference.embedding_files import write_npz

    folder, _ = catalogue
    root = tmp_path_factory.mktemp("digest")
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    embedded = model.embed_files(find_images(folder))
    arrays = {"embeddings": embedded.embeddings, "paths": np.array([str(p) for p in embedded.paths])}
    copied = root / "copied" / "renamed.ckpt"
    copied.parent.mkdir()
    copied.write_bytes(ckpt.read_bytes())
    return {
        "ckpt": ckpt,
        "digest": write_npz(root / "digest.npz", arrays, str(ckpt), model.digest),
        "old": write_npz(root / "old.npz", arrays, str(ckpt)),
        "copied": copied,
        "other": other_checkpoint(ckpt, root / "other.ckpt"),
    }


def test_the_digest_names_the_weights_not_the_file(npz_galleries, tmp_path):
    from simlearn.inference import load_model
    from simlearn.inference.model_folder import write_model_folder

    model = load_model(npz_galleries["ckpt"])
    assert len(model.digest) == 64 and str(np.load(npz_galleries["digest"])["model_digest"]) == model.digest
    assert load_model(npz_galleries["copied"]).digest == model.digest
    # the same model exported as a model folder (safetensors weights) is the same model
    assert load_model(write_model_folder(model, tmp_path / "folder", "card")).digest == model.digest
    assert load_model(npz_galleries["other"]).digest != model.digest
    assert "model_digest" not in np.load(npz_galleries["old"]).files


def test_a_gallery_of_another_model_of_the_same_dimension_is_refused_in_one_line(npz_galleries, tmp_path, capfd):
    result = organise(capfd, npz_galleries["other"], npz_galleries["digest"], tmp_path / "run", "sheets=false")
    assert_clean_failure(result, "digest.npz", "was embedded by another model (digest ", "simlearn-embed ckpt_path=")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    digest = str(np.load(npz_galleries["digest"])["model_digest"])
    assert f"digest {digest[:12]}…" in result.stderr
    assert not (tmp_path / "run" / "clusters.csv").exists()


def test_a_copied_checkpoint_organises_its_gallery_without_a_warning(npz_galleries, tmp_path, capfd):
    # copy_check=false: its own warning is tested in tests/test_organise_copy_check.py; here only the digest's count
    result = organise(
        capfd, npz_galleries["copied"], npz_galleries["digest"], tmp_path / "run", "sheets=false", "copy_check=false"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "organise.log").read_text()  # the command's warnings are in its log file
    assert (tmp_path / "run" / "clusters.csv").is_file() and "WARNING" not in log, log


def test_an_old_gallery_without_a_digest_is_only_warned_about_by_path(npz_galleries, tmp_path, capfd):
    result = organise(
        capfd, npz_galleries["other"], npz_galleries["old"], tmp_path / "run", "sheets=false", "copy_check=false"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (tmp_path / "run" / "organise.log").read_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "old.npz' was embedded with" in warnings[0], warnings
    assert str(npz_galleries["ckpt"]) in warnings[0] and "records no model digest" in warnings[0]
    assert (tmp_path / "run" / "clusters.csv").is_file()


def test_a_gallery_of_a_model_given_with_pixels_is_refused_by_its_digest_in_one_line(npz_galleries, tmp_path, capfd):
    result = organise_pixels(capfd, tmp_path / "run", f"gallery={npz_galleries['digest']}")
    digest = str(np.load(npz_galleries["digest"])["model_digest"])
    assert_clean_failure(
        result, "digest.npz", f"was embedded by another model (digest {digest[:12]}…", "of embedder=pixels"
    )
    assert "embedder=pixels gallery=FOLDER" in result.stderr and str(npz_galleries["ckpt"]) in result.stderr
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_search_warns_by_digest(npz_galleries, caplog):
    """simlearn-search and -serve read galleries through load_gallery: another model's is warned about (by digest,
    whatever its path), a copied checkpoint's is not."""
    from simlearn.config import compose_config
    from simlearn.inference import load_model
    from simlearn.retrieval.gallery import load_gallery

    cfg = compose_config([], "search")
    for ckpt, warned in (("copied", False), ("other", True), ("ckpt", False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            load_gallery(npz_galleries["digest"], load_model(npz_galleries[ckpt]), cfg)
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("was embedded by another model" in m for m in messages) == warned, (ckpt, messages)
        assert not any("was embedded with" in m for m in messages), messages  # the path no longer counts


# -- contact sheets of data held in memory -----------------------------------------------------------------------
def tile_areas(sheet: np.ndarray, rows: int, columns: int, tile: int = 96) -> list[np.ndarray]:
    """The image area of each tile of a sheet saved by save_retrieval_grid (its layout: a title band of 28 px, per
    cell a 30 px caption band, a 4 px frame and a 10 px gap), without the frame."""
    head, caption, frame, gap = 28, 30, 4, 10
    cell_w, cell_h = tile + 2 * frame + gap, caption + tile + 2 * frame + gap
    areas = []
    for r in range(rows):
        for c in range(columns):
            y, x = head + r * cell_h + caption + frame, c * cell_w + gap // 2 + frame
            areas.append(sheet[y + 8 : y + tile - 8, x + 8 : x + tile - 8])
    return areas


def test_sheets_of_in_memory_digits_show_the_items(trained_run, tmp_path, capfd):
    """Without gallery=, the checkpoint's digits (in memory, no files): the tiles hold the digits' pixels."""
    out = tmp_path / "run"
    result = run_main(
        "simlearn.cli.organise",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out}",
        "device=cpu",
        "sheet_clusters=1",
        "sheet_nearest_rows=1",
        "sheet_farthest_rows=0",
        "sheet_groups=0",
        "sheet_outliers=8",
        capfd=capfd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name, rows in (("cluster_0.png", 1), ("outliers.png", 1)):
        with Image.open(out / "sheets" / name) as image:
            sheet = np.asarray(image.convert("L"), dtype=np.float64)
        spreads = [float(area.std()) for area in tile_areas(sheet, rows, 8)]
        # an empty tile is one flat grey (std 0); a digit is dark strokes on light
        assert min(spreads) > 20, (name, spreads)


def test_simlearn_embed_records_the_digest_in_every_file_and_a_table_of_another_model_is_refused(
    npz_galleries, tmp_path
):
    import pyarrow.parquet as pq

    from simlearn.config import compose_config
    from simlearn.errors import UserError
    from simlearn.inference import load_model
    from simlearn.inference.embedding_files import embed_dataset
    from simlearn.retrieval import vectordb
    from simlearn.retrieval.gallery import load_gallery

    db = tmp_path / "digits.lancedb"
    cfg = compose_config(
        [f"ckpt_path={npz_galleries['ckpt']}", f"db={db}", "splits=[test]", "device=cpu"], "embed", tmp_path / "e"
    )
    written = embed_dataset(cfg)
    digest = load_model(npz_galleries["ckpt"]).digest
    assert str(np.load(written["test"])["model_digest"]) == digest
    assert pq.read_schema(written["parquet"]).metadata[b"simlearn.model_digest"] == digest.encode()
    assert vectordb.read_table(db).model_digest == digest
    search_cfg = compose_config([], "search")
    with pytest.raises(UserError, match=r"LanceDB table 'embeddings'\) was embedded by another model \(digest "):
        load_gallery(db, load_model(npz_galleries["other"]), search_cfg, refuse_other_model=True)
    assert load_gallery(db, load_model(npz_galleries["copied"]), search_cfg, refuse_other_model=True).ids


# -- what a hostile user tries -------------------------------------------------------------------------------------
def test_a_second_run_into_the_same_dir_is_refused_and_changes_nothing(catalogue, tmp_path, capfd):
    folder, _ = catalogue
    out = tmp_path / "run"
    first = organise_pixels(capfd, out, f"gallery={folder}", "k=3", "sheet_clusters=12", "copy_check=false")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".log"}
    again = organise_pixels(capfd, out, f"gallery={folder}", "k=5")
    assert_clean_failure(again, "already holds the results of another run", "organise.json", "more)")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert {p: p.read_bytes() for p in before} == before  # nothing written over
    assert json.loads((out / "organise.json").read_text())["clusters"]["k"] == 3


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["kmeans_restarts=0"], ["kmeans_restarts=0 must be a whole number ≥ 1", "k-means starts"]),
        (["uniqueness_k=two"], ["uniqueness_k='two' must be a whole number ≥ 1"]),
        (
            ["method=hdbscan", "min_cluster_size=1"],
            ["min_cluster_size=1 must be a whole number ≥ 2", "one item is not a cluster"],
        ),
        (["method=hdbscan", "min_cluster_size=500"], ["min_cluster_size=500 is more than the 132 items", "2 to 132"]),
        (["sheet_columns=0"], ["sheet_columns=0 must be a whole number ≥ 1"]),
        (["sheet_outliers=-1"], ["sheet_outliers=-1 must be a whole number ≥ 0"]),
        (["batch_size=0"], ["batch_size=0 must be a whole number ≥ 1"]),
        (["sheets=maybe"], ["sheets='maybe' must be true or false"]),
        (["copy_check=1"], ["copy_check=1 must be true or false"]),
        (["pixels.size=4000"], ["pixels.size=4000 must be a whole number from 1 to 256"]),
        (["max_neighbours=0"], ["max_neighbours=0 must be a whole number ≥ 1"]),
        (["exact_limit=-1"], ["exact_limit=-1 must be a whole number ≥ 0"]),
        (["faiss_params=5"], ["faiss_params=5 is not faiss search parameters", "faiss_params={efSearch:128}"]),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(catalogue, tmp_path, capfd, overrides, fragments):
    result = organise_pixels(capfd, tmp_path / "run", f"gallery={catalogue[0]}", "sheets=false", *overrides)
    assert_clean_failure(result, *fragments)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((tmp_path / "run").glob("*.csv"))


def test_pixels_too_large_for_the_memory_are_refused_before_embedding(catalogue, tmp_path, capfd, monkeypatch):
    from simlearn.inference.pixels import pixel_gallery_bytes

    # 132 images at 64 x 64 x 3 (8 copies) and a batch of 256 (4) need about 98 MiB; say that 4 MiB are available
    monkeypatch.setattr("simlearn.organise.command.available_memory", lambda: 4 * 2**20)
    assert pixel_gallery_bytes(132, 64, 3, 256) > 4 * 2**20
    result = organise_pixels(capfd, tmp_path / "run", f"gallery={catalogue[0]}", "pixels.size=64")
    assert_clean_failure(
        result,
        "pixels.size=64 makes 12,288 values per image",
        "the 132 images",
        "about 97.5 MiB",
        "4.0 MiB are available",
    )
    assert "(about 12 fits)" in result.stderr
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cache").exists()  # nothing embedded


def test_the_pixels_refuse_a_stored_gallery_without_their_digest_in_one_line(npz_galleries, tmp_path, capfd):
    result = organise_pixels(capfd, tmp_path / "run", f"gallery={npz_galleries['old']}")
    assert_clean_failure(result, "old.npz", "holds embeddings of a model, not of the pixels", "gallery=FOLDER")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unwritable_sheets_folder_is_one_line_before_any_work(catalogue, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    (out / "sheets").write_text("not a folder")  # as root, a file in the way is what stops writing
    result = organise_pixels(capfd, out, f"gallery={catalogue[0]}")
    assert_clean_failure(result, "the contact sheets' folder", "is not writable", "hydra.run.dir=DIR")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (out / "clusters.csv").exists() and (out / "sheets").read_text() == "not a folder"


def test_unreadable_files_are_counted_and_warned_about_on_every_run(catalogue, tmp_path, capfd):
    import shutil

    folder = tmp_path / "gallery"
    shutil.copytree(catalogue[0], folder)
    (folder / "0" / "broken.png").write_bytes(b"not a png")
    for run in ("first", "second"):  # the second reuses the cached embeddings
        result = organise_pixels(capfd, tmp_path / run, f"gallery={folder}", "sheets=false", "copy_check=false")
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / run / "organise.json").read_text())
        assert summary["skipped"] == 1 and summary["skipped_files"] == [str(folder / "0" / "broken.png")]
        log = (tmp_path / run / "organise.log").read_text()
        assert "skipped 1 unreadable image file(s)" in log and "broken.png" in log, log[-2000:]
    assert "reused from" in (tmp_path / "second" / "organise.log").read_text()


def test_a_gallery_spelled_another_way_reuses_nothing_it_cannot_and_runs(catalogue, tmp_path, capfd, monkeypatch):
    """The cache holds the files' paths as spelled: gallery=REL and gallery=/ABS of one folder each get their own."""
    import shutil

    shutil.copytree(catalogue[0], tmp_path / "gallery")
    monkeypatch.chdir(tmp_path)
    for run, spelled in (("rel", "gallery"), ("abs", str(tmp_path / "gallery")), ("rel2", "gallery")):
        result = organise_pixels(capfd, tmp_path / run, f"gallery={spelled}", "sheets=false", "copy_check=false")
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((tmp_path / run / "organise.json").read_text())["items"] == 132
    assert "reused from" in (tmp_path / "rel2" / "organise.log").read_text()
