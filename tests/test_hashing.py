"""head=hash: a hashing head trained with any loss plus its quantization term (or the CSQ preset), evaluated by
Hamming distance on its binary codes, which the run's embeddings.npz holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.evaluation.hamming import hamming_metrics
from simlearn.losses.hashing import HashCenterTask, hash_centres
from simlearn.models.heads import HashHead

from .helpers import run_main, run_training


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["contrastive", "csq"])  # any loss plus the quantization term; the preset
def test_a_hash_head_trains_reports_hamming_metrics_and_writes_packed_codes(tmp_path, loss):
    metrics = run_training(tmp_path, "head=hash", "head.bits=16", f"loss={loss}", "trainer.max_epochs=2")
    arrays = np.load(tmp_path / "embeddings.npz")
    codes = arrays["codes"]
    assert codes.dtype == np.uint8 and codes.shape == (len(arrays["embeddings"]), 2)
    np.testing.assert_array_equal(codes, np.packbits(arrays["embeddings"] > 0, axis=1))
    # the test metrics are the codes' Hamming metrics (not the float relaxation's, reported as float/...)
    again = hamming_metrics(codes, arrays["labels"])
    for key in ("recall@1", "map@r", "map@1000", "tie_aware/map@r"):
        assert metrics[f"test/{key}"] == pytest.approx(again[key], abs=1e-12)
    assert metrics["test/float/map@r"] != metrics["test/map@r"]
    assert metrics["test/recall@1"] > 0.9  # measured: untrained 0.104; contrastive 0.958, csq 0.947
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/tie_aware/recall@1" in written


def test_the_quantization_term_is_added_to_the_loss_and_pulls_to_plus_minus_one():
    head = HashHead(8, 16, quantization=0.5)
    u = head(torch.randn(4, 8)).detach()
    assert (u.abs() <= 1).all()
    assert float(head.quantization_loss(u)) == pytest.approx(0.5 * float(((u.abs() - 1) ** 2).mean()))
    assert float(head.quantization_loss(torch.ones(2, 16))) == 0.0


def test_ste_trains_on_plus_minus_one_with_tanhs_gradient_and_embeds_the_same_codes():
    """head.relaxation=ste: in training the forward is exactly ±1 (the sign pattern pack_codes reads), the gradient
    that of tanh (straight through: equal to the tanh head's for the same upstream gradient); out of training, the
    tanh values, whose codes are those of the ±1."""
    from simlearn.retrieval.codes import pack_codes

    ste, tanh = HashHead(8, 16, relaxation="ste"), HashHead(8, 16, relaxation="tanh")
    tanh.load_state_dict(ste.state_dict())
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    signs = ste.train()(x)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    (signs * upstream).sum().backward()
    (tanh.train()(x) * upstream).sum().backward()
    for (name, a), (_, b) in zip(ste.named_parameters(), tanh.named_parameters(), strict=True):
        assert a.grad is not None and float(a.grad.abs().sum()) > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    with torch.no_grad():
        relaxed = ste.eval()(x)
    torch.testing.assert_close(relaxed, tanh.eval()(x).detach(), rtol=0, atol=0)
    assert not set(relaxed.unique().tolist()) <= {-1.0, 1.0}  # a float relaxation to re-rank with
    np.testing.assert_array_equal(pack_codes(relaxed), pack_codes(signs))
    with pytest.raises(UserError, match=r"head.relaxation='sign' is not a relaxation of the code; valid: \['tanh'"):
        HashHead(8, 16, relaxation="sign")


def test_the_training_step_adds_the_heads_quantization_term(tmp_path):
    from simlearn.build import build_datamodule, build_model
    from simlearn.config import compose_config

    cfg = compose_config(["head=hash", "head.bits=16", "head.quantization=2.0", "logger=none"], output_dir=tmp_path)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    logged = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, value)
    model.log_dict = lambda values, **_: logged.update(values)
    model._stop_unless_finite = lambda *_: None  # needs a Trainer; not what is tested here
    with torch.no_grad():
        total = model.training_step(batch, 0)
        embeddings = model(batch["image"])
        plain = model.loss(embeddings, batch)["loss"]
    assert float(total) == pytest.approx(float(plain + model.encoder.head.quantization_loss(embeddings)), rel=1e-6)
    assert "train/loss_quantization" in logged


def test_csq_centres_are_hadamard_rows_and_their_negatives():
    centres = hash_centres(16, 20)
    distances = (centres[:, None, :] != centres[None, :, :]).sum(axis=2)
    off = distances[~np.eye(20, dtype=bool)]
    assert set(off.tolist()) <= {8, 16}  # half the bits apart, or opposite
    assert hash_centres(24, 5, seed=1).shape == (5, 24)  # not a power of 2: random centres
    task = HashCenterTask("digit", 16, 10)
    perfect = task.centres[torch.tensor([3, 7])] * 0.999999
    assert (task.predict(perfect) == torch.tensor([3, 7])).all()
    assert float(task(perfect, {"digit": torch.tensor([3, 7])})) < 1e-3


def test_bits_that_are_not_a_multiple_of_8_are_one_line(tmp_path, capfd):
    with pytest.raises(UserError, match="multiple of 8"):
        HashHead(8, 12)
    result = run_main("simlearn.cli.train", "head=hash", "head.bits=12", f"hydra.run.dir={tmp_path}", capfd=capfd)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: head.bits must be a positive multiple of 8 (codes are packed in whole bytes), got 12; "
        "e.g. 16, 32, 64 or 128."
    ]


def test_a_bit_count_of_another_type_is_one_line_whose_example_is_valid(tmp_path, capfd):
    result = run_main("simlearn.cli.train", "head=hash", "head.bits=x", f"hydra.run.dir={tmp_path}", capfd=capfd)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: head.bits must be an integer, got 'x' (str); e.g. head.bits=64."
    HashHead(8, 64)  # the example it gives is a valid bit count
