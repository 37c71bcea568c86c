"""The speed options (trainer.precision, channels_last, compile) train to the quality of float32 and their
checkpoints evaluate like any other; timings are in scripts/bench_train.py, not here."""

import pytest
import torch

from simlearn.inference import load_model

from .helpers import run_training
from .test_training import RECALL_FLOOR


@pytest.mark.parametrize("option", ["trainer.precision=bf16-mixed", "channels_last=true"])
def test_speed_option_trains_multitask_to_the_float32_floor(tmp_path, option):
    # multitask: its parity head predicts from the collected embeddings, which must be float32 whatever the precision
    metrics = run_training(tmp_path, "loss=digits_multitask", "trainer.max_epochs=5", option)
    assert metrics["test/recall@1"] >= RECALL_FLOOR
    assert metrics["test/accuracy_parity"] > 0.9

    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert {value.dtype for value in state.values() if value.is_floating_point()} == {torch.float32}
    encoder = load_model(tmp_path / "checkpoints" / "last.ckpt").encoder
    with torch.no_grad():
        embeddings = encoder(torch.rand(3, 1, 8, 8))
    assert embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_compiled_encoder_trains_and_its_checkpoint_loads_uncompiled(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    metrics = run_training(tmp_path, "compile=true", "trainer.max_epochs=1", "data.max_train=256")
    assert 0.0 < metrics["test/recall@1"] <= 1.0
    # the encoder's forward really went through torch.compile: dynamo captured and compiled its frames
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert counters["frames"]["ok"] >= 1, dict(counters["frames"])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # compiled in place: the same parameter names
    encoder = load_model(tmp_path / "checkpoints" / "last.ckpt").encoder
    with torch.no_grad():
        assert encoder(torch.rand(2, 1, 8, 8)).shape == (2, 64)
