"""torchvision backbones: shapes, channels, freezing, pretrained weights from the cache and a clear error offline."""

import time
from urllib.error import URLError

import pytest
import torch
import torchvision

from simlearn.errors import UserError
from simlearn.models import backbones
from simlearn.models.backbones import TorchvisionBackbone


@pytest.mark.parametrize("name,width", [("resnet18", 512), ("resnet50", 2048), ("vgg16", 512)])
def test_backbones_give_pooled_features_for_any_channels_and_size(name, width):
    backbone = TorchvisionBackbone(name, in_channels=1).eval()
    assert backbone.out_features == width
    assert backbone(torch.randn(2, 1, 8, 8)).shape == (2, width)  # vgg16's pools round up: 8 px still work
    assert TorchvisionBackbone(name, in_channels=3)(torch.randn(2, 3, 32, 32)).shape == (2, width)


def test_frozen_backbone_has_no_trainable_parameters_and_stays_in_eval_mode():
    backbone = TorchvisionBackbone("resnet18", freeze=True).train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.net.modules())


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_weights_are_read_from_the_torch_hub_cache(empty_cache, monkeypatch):
    def no_download(url, path, timeout_s=0):
        raise AssertionError("the cached file must be used")

    monkeypatch.setattr(backbones, "download_weights", no_download)
    reference = torchvision.models.resnet18()
    empty_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_cache / "resnet18-f37072fd.pth")
    backbone = TorchvisionBackbone("resnet18", in_channels=3, pretrained=True)
    assert torch.equal(backbone.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    grey = TorchvisionBackbone("resnet18", in_channels=1, pretrained="IMAGENET1K_V1")
    assert torch.allclose(grey.net.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    (empty_cache / "resnet18-f37072fd.pth").write_bytes(b"half a file")
    with pytest.raises(UserError, match=r"is not a readable weights file \(.*\); delete it"):
        TorchvisionBackbone("resnet18", pretrained=True)
    torch.save({"fc.weight": torch.zeros(3)}, empty_cache / "resnet18-f37072fd.pth")
    with pytest.raises(UserError, match="do not fit resnet18"):
        TorchvisionBackbone("resnet18", pretrained=True)


def test_pretrained_weights_offline_is_one_clear_error(empty_cache, monkeypatch):
    def offline(url, path, timeout_s=0):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(backbones, "download_weights", offline)
    with pytest.raises(UserError) as error:
        TorchvisionBackbone("vgg16", pretrained=True)
    message = str(error.value)
    assert "not in the torch hub cache" in message and "vgg16-397923af.pth" in message
    assert str(empty_cache) in message and "backbone.pretrained=false" in message
    with pytest.raises(UserError, match="valid: false"):
        TorchvisionBackbone("resnet18", pretrained="IMAGENET9K")


def test_a_real_download_attempt_without_network_fails_fast(empty_cache, monkeypatch):
    # a proxy on a closed local port refuses at once, whatever the network of the machine running the tests
    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"downloading them failed \(URLError") as error:
        TorchvisionBackbone("resnet18", pretrained=True)
    assert time.monotonic() - started < backbones.DOWNLOAD_TIMEOUT_S
    assert str(empty_cache / "resnet18-f37072fd.pth") in str(error.value)
    assert not list(empty_cache.parent.parent.rglob("*.pth*"))
