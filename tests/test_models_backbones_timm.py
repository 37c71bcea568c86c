"""backbone=timm: any timm model by name (timm's tiny test models, random weights: nothing is downloaded), its
pretrained weights from the Hugging Face cache or a local file, one line offline or for a misspelt name, freezing,
and the data's image size / mean / std taken from the backbone when the data config leaves them null."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from simlearn.build import check_config
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.inference import load_model
from simlearn.inference.embedding_files import embed_dataset
from simlearn.inference.search import search
from simlearn.models.backbones import TimmBackbone, hub_reachable
from simlearn.train import train

HUB_ID = "timm/test_resnet.r160_in1k"  # test_resnet's pretrained weights on the hub (never fetched here)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, with the hub switched off (HF_HUB_OFFLINE), as on a machine without
    network: nothing here may reach the network, whatever the machine that runs the tests has."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def save_weights(path: Path) -> dict[str, torch.Tensor]:
    """A test_resnet ImageNet-style state dict (classifier included, 3 input channels) as a safetensors file."""
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


def test_any_timm_model_without_its_classifier():
    backbone = TimmBackbone("test_efficientnet", in_channels=1)
    assert backbone.out_features == 256
    assert backbone(torch.randn(2, 1, 32, 32)).shape == (2, 256)
    assert backbone.preprocessing() == {"image_size": 160, "mean": pytest.approx([0.485, 0.456, 0.406]),
                                        "std": pytest.approx([0.229, 0.224, 0.225]), "crop_pct": 0.95,
                                        "interpolation": "bicubic"}  # fmt: skip
    vit = TimmBackbone("test_vit", model_kwargs={"img_size": 32})  # a ViT is built for one size
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, vit.out_features) and vit.preprocessing()["image_size"] == 32


def test_freeze_keeps_the_backbone_fixed():
    backbone = TimmBackbone("test_resnet", freeze=True)
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.net.training  # batch-norm statistics kept


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_resnt", r"'test_resnt' is not a timm model \(close matches: test_resnet"),
        ("resnt50", r"close matches: resnet50,"),
        ("test_resnet.nope", r"not its weights tag 'nope'; valid: test_resnet\.r160_in1k"),
    ],
)
def test_a_misspelt_name_lists_close_matches(name, expected):
    with pytest.raises(UserError, match=expected) as error:
        TimmBackbone(name)
    assert "\n" not in str(error.value)


def test_pretrained_offline_is_one_line_at_once(hub_cache):
    start = time.perf_counter()
    with pytest.raises(UserError) as error:
        TimmBackbone("test_resnet", pretrained=True)
    message = str(error.value)
    assert time.perf_counter() - start < 5  # no retries against an unreachable hub
    assert "\n" not in message
    for part in (
        HUB_ID,
        "model.safetensors",
        str(hub_cache),
        "HF_HUB_OFFLINE",
        "backbone.checkpoint_path=",
        "pretrained=false",
    ):
        assert part in message, part
    with pytest.raises(UserError, match="test_vit4 has no pretrained weights"):
        TimmBackbone("test_vit4", pretrained=True)


def test_an_unreachable_host_is_told_in_moments():
    start = time.perf_counter()
    assert "cannot be reached" in hub_reachable("weights.invalid")  # .invalid never resolves (RFC 2606)
    assert time.perf_counter() - start < 15  # a DNS answer, not the hub client's 46 s of retries


def test_pretrained_weights_in_the_hugging_face_cache_load_offline(hub_cache):
    snapshot = hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / "0123abcd"
    state = save_weights(snapshot / "model.safetensors")
    (hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "refs").mkdir(parents=True)
    (hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
    backbone = TimmBackbone("test_resnet", pretrained=True)
    torch.testing.assert_close(backbone.net.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert "fc.weight" not in backbone.net.state_dict()  # num_classes=0: the classifier is dropped


def test_checkpoint_path_reads_a_local_weights_file(tmp_path, hub_cache):
    state = save_weights(tmp_path / "weights.safetensors")
    backbone = TimmBackbone(
        "test_resnet", in_channels=1, pretrained=True, checkpoint_path=str(tmp_path / "weights.safetensors")
    )
    loaded = backbone.net.state_dict()
    torch.testing.assert_close(loaded["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    # one input channel: timm sums the RGB filters of the first convolution
    first = next(k for k in loaded if k.endswith("weight") and loaded[k].dim() == 4)
    torch.testing.assert_close(loaded[first], state[first].sum(dim=1, keepdim=True))
    with pytest.raises(UserError, match=r"is not a file"):
        TimmBackbone("test_resnet", pretrained=True, checkpoint_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match=r"add backbone\.pretrained=true"):
        TimmBackbone("test_resnet", checkpoint_path=str(tmp_path / "weights.safetensors"))


def test_a_model_too_big_for_the_images_is_one_line():
    with pytest.raises(UserError, match=r"test_convnext cannot take 8×8 images .* set data\.image_size=160"):
        TimmBackbone("test_convnext", in_channels=1)(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("overrides", "size", "mean"),
    [
        (["backbone=timm", "backbone.name=test_vit"], 160, [0.5, 0.5, 0.5]),  # the model's pretrained config
        (
            [
                "backbone=timm",
                "backbone.name=test_vit",
                "data.image_size=64",
                "data.mean=[0.4,0.4,0.4]",
                "data.std=[0.2,0.2,0.2]",
            ],
            64,
            [0.4, 0.4, 0.4],
        ),  # the data config says otherwise  # fmt: skip
        (["backbone=resnet18"], 224, [0.485, 0.456, 0.406]),  # torchvision: as before the keys were null
        (["backbone=small_cnn"], 224, None),  # declares nothing: the data's defaults (224; ImageNet's for files)
    ],
)
def test_photo_data_takes_image_size_mean_and_std_from_the_backbone(tmp_path, overrides, size, mean):
    cfg = compose_config(["data=image_folder", f"data.root={tmp_path}", *overrides], output_dir=tmp_path / "run")
    check_config(cfg)
    assert cfg.data.image_size == size and cfg.augment.transforms[0].size == size  # the crop follows
    assert (cfg.data.mean is None and mean is None) or list(cfg.data.mean) == pytest.approx(mean)


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """One epoch of backbone=timm test_resnet on the 8×8 digits (one channel), with its checkpoint."""
    root = tmp_path_factory.mktemp("timm_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model trains fastest on one thread
    try:
        overrides = ["logger=none", "reports.plots=null", "reports.structure=null", "trainer.max_epochs=1"]
        metrics = train(
            compose_config([*overrides, "backbone=timm", "backbone.name=test_resnet"], output_dir=root / "run")
        )
    finally:
        torch.set_num_threads(threads)
    ckpt = next((root / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    cfg = compose_config([f"ckpt_path={ckpt}", "device=cpu", "splits=[test]", "parquet=false"], config_name="embed",
                         output_dir=root / "embed")  # fmt: skip
    return root, metrics, ckpt, embed_dataset(cfg)["test"]


def test_training_a_timm_backbone_on_digits_then_embed_and_search(timm_run, tmp_path):
    root, metrics, ckpt, gallery = timm_run
    assert metrics["test/recall@1"] > 0.5 and metrics["test/num_queries"] == 450
    loaded = load_model(ckpt)
    assert loaded.encoder.backbone.out_features == 96
    assert loaded.preprocessing["image_size"] == 8 and loaded.preprocessing["channels"] == 1  # the digits', stored
    test = np.load(gallery)  # simlearn-embed of the checkpoint's own test split: the run's test embeddings
    np.testing.assert_allclose(test["embeddings"], np.load(root / "run" / "embeddings.npz")["embeddings"], atol=1e-5)
    # search the test split with PNGs of three test digits: each finds itself first (cosine ≈ 1)
    digits = load_digits()
    for index in test["index"][:3]:
        image = (digits.images[index] / 16 * 255).round().astype(np.uint8)
        Image.fromarray(image).save(tmp_path / f"{index}.png")
    search_cfg = compose_config(
        [f"ckpt_path={ckpt}", f"query={tmp_path}", f"gallery={gallery}", "k=1", "device=cpu",
         f"paths.log_dir={tmp_path / 'logs'}"],
        config_name="search",
        output_dir=tmp_path / "search",
    )  # fmt: skip
    results = search(search_cfg)
    assert len(results) == 3
    for result in results:
        top = result["results"][0]
        assert top["cosine"] > 0.99 and int(test["index"][top["id"]]) == int(Path(result["query"]).stem), result


def test_other_photo_data_is_prepared_as_the_checkpoint_was_trained(timm_run, tmp_path):
    """simlearn-embed of an image folder that leaves data.image_size/mean/std null: they are the checkpoint's (8
    pixels, the digits' grey statistics), so PNGs of test digits embed as the digits themselves did."""
    _, _, ckpt, gallery = timm_run
    run = np.load(gallery)
    digits = load_digits()
    wanted = {}
    for row, index in enumerate(run["index"][:200]):
        image = (digits.images[index] / 16 * 255).round().astype(np.uint8)
        path = tmp_path / "pngs" / str(digits.target[index]) / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        wanted[int(index)] = run["embeddings"][row]
    overrides = [f"ckpt_path={ckpt}", "data=image_folder", f"data.root={tmp_path / 'pngs'}", "data.channels=1",
                 "data.num_workers=0", "parquet=false", "device=cpu"]  # fmt: skip
    paths = embed_dataset(compose_config(overrides, config_name="embed", output_dir=tmp_path / "e"))
    found = [np.load(paths[split]) for split in ("train", "val", "test")]
    assert sum(len(f["paths"]) for f in found) == len(wanted)
    for f in found:
        for path, embedding in zip(f["paths"], f["embeddings"], strict=True):
            np.testing.assert_allclose(embedding, wanted[int(Path(path).stem)], atol=2e-3)


def test_weights_of_another_architecture_or_a_corrupt_file_are_one_line(tmp_path, hub_cache, caplog):
    """timm loads non-strictly once the classifier is dropped: a file of another model must not leave random weights
    behind a log line, nor end in torch's cut-off "Error(s) in loading state_dict"; a corrupt file says how to fix."""
    vit = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(vit))
    with pytest.raises(UserError) as error:
        TimmBackbone("test_resnet", pretrained=True, checkpoint_path=str(vit))
    message = str(error.value)
    assert "\n" not in message
    assert "tensors are missing from it, e.g. conv1.0.weight" in message  # the model's first keys
    assert "the file holds 80 tensors" in message and "blocks.0.attn" in message  # what the file looks like
    assert "Fix: give backbone.checkpoint_path a weights file of test_resnet" in message
    assert not [r for r in caplog.records if "keys" in r.getMessage()]  # said once, in the error, not also by timm
    wider = tmp_path / "efficientnet.safetensors"  # the same key names, other shapes
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet", stem_width=24).state_dict().items()}
    save_file(state, str(wider))
    with pytest.raises(UserError, match=r"does not fit the model: size mismatch for \S+: .*\(and \d+ more\); the file "
                                        r"holds .*Fix:") as error:  # fmt: skip
        TimmBackbone("test_resnet", pretrained=True, checkpoint_path=str(wider))
    assert "\n" not in str(error.value)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"checkpoint_path=.*corrupt\.safetensors is not a readable safetensors file "
                                        r"\(SafetensorError: .*Fix: download the weights") as error:  # fmt: skip
        TimmBackbone("test_resnet", pretrained=True, checkpoint_path=str(corrupt))
    assert "\n" not in str(error.value)


def test_torchvision_weights_of_another_architecture_name_the_keys(tmp_path, monkeypatch):
    from simlearn.models.backbones import TorchvisionBackbone, pretrained_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained_weights("resnet18", True).url).name
    path.parent.mkdir(parents=True)
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(UserError) as error:
        TorchvisionBackbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message and "do not fit resnet18 (ResNet): " in message
    assert "122 of its 122 tensors are missing: conv1.weight, bn1.weight, bn1.bias (and 119 more)" in message
    assert "are not the model's: cls_token, pos_embed" in message and "the file holds" in message
    assert "Fix: delete the file to download it again" in message


def framed_image(height: int = 200, width: int = 260) -> Image.Image:
    """Smooth gradients inside a black and white frame: which share of the image a centre crop keeps, and how it was
    resampled, shows in every pixel."""
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (height + width)], -1)
    pixels = pixels.astype(np.uint8)
    pixels[:12], pixels[-12:], pixels[:, :12], pixels[:, -12:] = 255, 0, 0, 255
    return Image.fromarray(pixels)


def test_a_timm_model_is_fed_its_own_evaluation_transform():
    """crop_pct and interpolation of the model's pretrained config (timm.data.resolve_model_data_config) are applied:
    simlearn's transform is timm's create_transform, not a resize to the full square."""
    from timm.data import create_transform, resolve_model_data_config

    from simlearn.data.images import ImageLoader

    backbone = TimmBackbone("test_vit")  # pretrained config: 160 px, crop_pct 0.95, bicubic, mean/std 0.5
    declared = backbone.preprocessing()
    assert declared == {"image_size": 160, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.95,
                        "interpolation": "bicubic"}  # fmt: skip
    image = framed_image()
    timm_input = create_transform(**resolve_model_data_config(backbone.net))(image)
    ours = ImageLoader({**declared, "channels": 3}).transform(image)
    full_square = ImageLoader({**declared, "channels": 3, "crop_pct": None, "interpolation": None}).transform(image)
    assert ours.shape == timm_input.shape == (3, 160, 160)
    # timm resizes the uint8 PIL image, simlearn the float tensor: they differ by rounding, at most 2/255 of a pixel
    # value (0.016 after the std of 0.5); the full square differs by the frame itself
    assert (ours - timm_input).abs().max() < 0.02 and (ours - timm_input).abs().mean() < 0.003
    assert (full_square - timm_input).abs().max() > 1.0 and (full_square - timm_input).abs().mean() > 0.05


def test_photo_data_takes_the_timm_crop_and_checkpoints_record_it(tmp_path):
    """Evaluation splits of image files get the backbone's crop (training keeps its random crop); the model's config
    records it, so what is stored in the checkpoint prepares new images the same way."""
    from simlearn.build import build_datamodule, build_model
    from simlearn.data.images import ImageLoader

    image = framed_image(48, 64)
    for label in ("a", "b", "c"):
        for i in range(8):
            (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
            image.rotate(30 * i + 100 * (label == "b") + 200 * (label == "c")).save(
                tmp_path / "photos" / label / f"{i}.png"
            )
    overrides = ["data=image_folder", f"data.root={tmp_path / 'photos'}", "data.num_workers=0", "backbone=timm",
                 "backbone.name=test_vit", "+backbone.model_kwargs.img_size=32", "data.image_size=32"]  # fmt: skip
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    check_config(cfg)
    assert cfg.data.crop_pct == 0.95 and cfg.data.interpolation == "bicubic"  # the backbone's, size overridden
    datamodule = build_datamodule(cfg.data)
    stored = build_model(cfg, datamodule).config["preprocessing"]  # what on_save_checkpoint writes
    assert stored["crop_pct"] == 0.95 and stored["interpolation"] == "bicubic" and stored["image_size"] == 32
    test = datamodule.datasets["test"]
    row = int(test.indices[0])
    torch.testing.assert_close(test[0]["image"], ImageLoader(stored)(test.paths[row]), rtol=0, atol=0)
    resizes = [t for t in test.transform.transforms if type(t).__name__ == "Resize"]
    assert resizes[0].size == [33] and resizes[0].interpolation.value == "bicubic"  # floor(32 / 0.95)
    train_resize = [t for t in datamodule.datasets["train"].transform.transforms if type(t).__name__ == "Resize"]
    assert train_resize[0].size == [32]  # after augment=light's random crop to 32: no crop_pct, as timm's training
    kept = compose_config([*overrides, "data.crop_pct=1.0", "data.interpolation=bilinear"], output_dir=tmp_path / "r")
    check_config(kept)
    assert kept.data.crop_pct == 1.0 and kept.data.interpolation == "bilinear"  # the data config says otherwise
    from hydra.utils import instantiate

    with pytest.raises(Exception, match=r"data\.crop_pct must be in \(0, 1\]") as error:  # the command: one line
        instantiate(compose_config([*overrides, "data.crop_pct=1.5"], output_dir=tmp_path / "x").data)
    assert isinstance(error.value.__cause__ or error.value, UserError)


def test_a_checkpoint_without_the_crop_record_keeps_the_old_transform(timm_run, tmp_path):
    """Checkpoints written before the crop was recorded load as they were trained: the full square, bilinear, also
    for other photo data embedded with them (the backbone's crop_pct is not applied behind their back)."""
    from simlearn.checkpoints import checkpoint_config
    from simlearn.data.image_files import image_transform
    from simlearn.data.images import ImageLoader

    _, _, ckpt, _ = timm_run
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    prep = checkpoint["simlearn_config"]["preprocessing"]
    old = {key: prep[key] for key in ("image_size", "channels", "mean", "std")}
    checkpoint["simlearn_config"]["preprocessing"] = old  # as an older simlearn wrote it
    old_ckpt = tmp_path / "old.ckpt"
    torch.save(checkpoint, old_ckpt)
    loaded = load_model(old_ckpt)
    assert loaded.preprocessing == old
    image = framed_image(40, 56).convert("L")
    expected = image_transform(old["image_size"], 1, old["mean"], old["std"])(image)
    torch.testing.assert_close(ImageLoader(loaded.preprocessing).transform(image), expected, rtol=0, atol=0)
    cfg = compose_config([f"ckpt_path={old_ckpt}", "data=image_folder", f"data.root={tmp_path}", "data.channels=1"],
                         config_name="embed", output_dir=tmp_path / "e")  # fmt: skip
    run_cfg = checkpoint_config(checkpoint, cfg)
    assert run_cfg.data.crop_pct is None and run_cfg.data.interpolation is None  # not test_resnet's 0.95, bilinear
