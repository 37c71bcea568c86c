"""Config types checked from one schema (simlearn/schema.py, through build.check_config): a wrong type is one line
naming the key, what it must be and a sensible value."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from simlearn.build import check_config
from simlearn.config import compose_config
from simlearn.errors import UserError


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs must be an integer"),
        ("head.out_dim=2.5", "head.out_dim must be an integer"),
        ("optimizer.lr=fast", "optimizer.lr must be a number"),
        ("evaluation.ks=[0,5]", "evaluation.ks must be a non-empty list"),
    ],
)
def test_wrong_types_are_named(tmp_path, override, message):
    cfg = compose_config([override], output_dir=tmp_path)
    with pytest.raises(UserError, match=message):
        check_config(cfg)


@pytest.mark.parametrize(
    "key,example",
    [
        ("optimizer.lr", "0.001"),
        ("optimizer.weight_decay", "0.01"),
        ("data.val_fraction", "0.1"),
        ("data.test_fraction", "0.2"),
        ("trainer.max_epochs", "10"),
        ("data.batch_size", "64"),
        ("seed", "42"),
    ],
)
def test_type_errors_suggest_a_sensible_value_for_each_key(key, example):
    cfg = compose_config(["logger=none"])
    OmegaConf.update(cfg, key, "abc")
    with pytest.raises(UserError) as caught:
        check_config(cfg)
    assert str(caught.value).endswith(f"e.g. {key}={example}."), str(caught.value)
