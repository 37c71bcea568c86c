"""Label-free training: views made in batches on the device for every source, the losses simclr / vicreg / byol (that
never read a label), the momentum teacher, DDP negatives from all ranks, and one-line refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

from simlearn.build import build_datamodule, build_model
from simlearn.data.views import (
    ColorJitter,
    RandomAffine,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ViewMaker,
    view_transforms,
)
from simlearn.errors import UserError, user_errors_unwrapped
from simlearn.fields import VIEW_FIELD
from simlearn.losses import MomentumTeacherTask, ViewContrastTask

from .helpers import run_main, run_training, train_config
from .photos import class_folders

LABEL_FREE = ["simclr", "vicreg", "byol"]


def training_batches(datamodule, count: int = 1) -> list[dict[str, torch.Tensor]]:
    """The first training batches as training sees them: through the data module's transfer hook, with a stand-in
    trainer that is training (batch numbers 0, 1, …)."""
    progress = SimpleNamespace(ready=0)
    datamodule.trainer = SimpleNamespace(
        training=True,
        global_rank=0,
        world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(total=progress))),
    )
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(datamodule.on_after_batch_transfer(batch, 0))
        progress.ready += 1
        if len(batches) == count:
            break
    datamodule.trainer = None
    return batches


def digits(tmp_path, *overrides: str):
    cfg = train_config(tmp_path, *overrides)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    return cfg, datamodule


# -- views ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transform",
    [
        RandomResizedCrop((0.2, 1.0)),
        RandomHorizontalFlip(0.5),
        RandomAffine(elastic=0.05),
        ColorJitter(p=1.0),
        RandomGrayscale(0.5),
        RandomGaussianBlur(p=1.0),
    ],
    ids=lambda t: type(t).__name__,
)
def test_each_image_of_a_batch_gets_its_own_draw_and_a_seed_repeats_it(transform):
    # eight copies of one image: a transform that drew once for the batch would give eight equal images
    image = torch.rand(3, 16, 16)
    batch = image.expand(8, -1, -1, -1).contiguous()
    first = transform(batch, torch.Generator().manual_seed(1))
    again = transform(batch, torch.Generator().manual_seed(1))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    distinct = {tuple(row.flatten().round(decimals=4).tolist()) for row in first}
    assert len(distinct) > 1, "every image of the batch got the same parameters"
    assert transform(image, torch.Generator().manual_seed(1)).shape == image.shape  # one image alone, per item


def test_views_are_view_major_with_every_field_repeated(tmp_path):
    cfg, datamodule = digits(tmp_path, "loss=simclr", "data.batch_size=16")
    assert datamodule.views == 2 and cfg.data.view_augment == "ssl_digits"
    (batch,) = training_batches(datamodule)
    assert batch["image"].shape == (32, 1, 8, 8)
    assert batch[VIEW_FIELD].tolist() == [0] * 16 + [1] * 16
    for key in ("index", "digit", "parity", "magnitude"):
        assert torch.equal(batch[key][:16], batch[key][16:]), key
    assert not torch.equal(batch["image"][:16], batch["image"][16:]), "the two views are the same images"
    # same seed, same batch number: the same views (what a resumed run relies on); normalised like every image
    (again,) = training_batches(digits(tmp_path, "loss=simclr", "data.batch_size=16")[1])
    torch.testing.assert_close(batch["image"], again["image"], rtol=0, atol=0)


def test_one_view_leaves_training_batches_as_they_were(tmp_path):
    _, datamodule = digits(tmp_path, "data.batch_size=16")
    assert datamodule.views == 1 and datamodule.view_maker is None
    loader_batch = next(iter(datamodule.train_dataloader()))
    (batch,) = training_batches(datamodule)
    assert batch.keys() == loader_batch.keys() and VIEW_FIELD not in batch
    torch.testing.assert_close(batch["image"], loader_batch["image"], rtol=0, atol=0)


def _source_views(tmp_path, *overrides: str) -> dict[str, torch.Tensor]:
    _, datamodule = digits(tmp_path, "loss=simclr", "data.batch_size=8", *overrides)
    (batch,) = training_batches(datamodule)
    return batch


def test_views_work_the_same_on_every_source(tmp_path):
    in_memory = _source_views(tmp_path / "a")
    on_device = _source_views(tmp_path / "b", "data.on_device=true")  # the device loader (here the CPU)
    torch.testing.assert_close(in_memory["image"], on_device["image"], rtol=0, atol=0)
    class_folders(tmp_path / "photos", {"red": 6, "green": 6, "blue": 6})
    files = _source_views(
        tmp_path / "c",
        "data=image_folder",
        f"data.root={tmp_path / 'photos'}",
        "data.image_size=24",
        "data.num_workers=0",
    )
    assert files["image"].shape == (16, 3, 24, 24) and files[VIEW_FIELD].tolist() == [0] * 8 + [1] * 8
    assert not torch.equal(files["image"][:8], files["image"][8:])


def test_bad_views_and_view_presets_are_one_line(tmp_path):
    valid = "valid: ['ssl', 'ssl_digits']"
    cases = {
        "data.views=0": "data.views must be an integer ≥ 1",
        "data.view_augment=light": f"data.view_augment=light is not a preset of view transforms; {valid}",
        "data.view_augment=sssl": f"data.view_augment=sssl does not exist; {valid}",
    }
    for override, message in cases.items():
        with pytest.raises(UserError) as error, user_errors_unwrapped():
            digits(tmp_path, "loss=simclr", override)
        assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="needs the batched transforms of simlearn.data.views"):
        ViewMaker(view_transforms({"transforms": [torch.nn.Identity()]}), 2, [0.5], [0.5])


def test_a_label_free_loss_without_views_says_which_key_to_set(tmp_path, capfd):
    """Refused while building, before anything trains: the run dir keeps no results, so the same command (corrected or
    not) may run there again."""
    for _ in range(2):
        result = run_main(
            "simlearn.cli.train", "loss=simclr", "data.views=1", f"hydra.run.dir={tmp_path}", "logger=none", capfd=capfd
        )
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        line = result.stderr.strip()
        assert "compares 2 views of each image, but data.views=1 makes one image per item; set data.views=2" in line
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()


# -- the losses never read a label -----------------------------------------------------------------------------------
class Recording(Mapping):
    """A batch that records which keys were read."""

    def __init__(self, data: Mapping[str, torch.Tensor]) -> None:
        self.data, self.read = dict(data), set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.parametrize("loss", LABEL_FREE)
def test_the_loss_never_reads_a_label_and_shuffled_labels_change_nothing(tmp_path, loss):
    cfg, datamodule = digits(tmp_path, f"loss={loss}", "data.batch_size=32")
    model = build_model(cfg, datamodule)
    (batch,) = training_batches(datamodule)

    def step(fields: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], set[str]]:
        torch.manual_seed(0)
        model.zero_grad()
        recording = Recording(fields)
        total = model.loss(model(fields["image"]), recording)["loss"]
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.encoder.parameters()], recording.read

    loss_value, grads, read = step(batch)
    assert read <= {"image", VIEW_FIELD}, f"the loss read {read}"
    permutation = torch.randperm(len(batch["digit"]))
    shuffled = {**batch, **{k: batch[k][permutation] for k in ("digit", "parity", "magnitude")}}
    shuffled_value, shuffled_grads, _ = step(shuffled)
    assert torch.equal(loss_value, shuffled_value)
    assert all(torch.equal(a, b) for a, b in zip(grads, shuffled_grads, strict=True))


def test_simclr_is_pml_self_supervised_nt_xent_for_two_views_and_generalises_it(tmp_path):
    cfg = train_config(tmp_path, "loss=simclr")
    task = instantiate(cfg.loss)
    assert isinstance(task, ViewContrastTask) and isinstance(task.loss, SelfSupervisedLoss)
    assert isinstance(task.loss.loss, NTXentLoss) and task.loss.loss.temperature == cfg.loss.loss.loss.temperature
    torch.manual_seed(0)
    a, b, c = (torch.randn(10, 6) for _ in range(3))
    two = {VIEW_FIELD: torch.arange(2).repeat_interleave(10)}
    expected = SelfSupervisedLoss(NTXentLoss(temperature=0.2))(a, b)
    torch.testing.assert_close(task(torch.cat([a, b]), two), expected)
    # three views: every view's positives are the other views of its image, the rest negatives (PML's own labels)
    three = {VIEW_FIELD: torch.arange(3).repeat_interleave(10)}
    labels = torch.arange(10).repeat(3)
    torch.testing.assert_close(
        task(torch.cat([a, b, c]), three), NTXentLoss(temperature=0.2)(torch.cat([a, b, c]), labels)
    )


# -- the momentum teacher --------------------------------------------------------------------------------------------
def test_the_teacher_follows_the_encoder_by_its_momentum_after_each_step(tmp_path):
    cfg, datamodule = digits(tmp_path, "loss=byol")
    model = build_model(cfg, datamodule)
    (task,) = model.loss.tasks.values()
    assert isinstance(task, MomentumTeacherTask) and task.teacher is not model.encoder
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert any(key.startswith("loss.tasks.image.teacher.") for key in model.state_dict())  # saved in checkpoints
    assert task.teacher_momentum(0, 100) == pytest.approx(0.99) and task.teacher_momentum(100, 100) == 1.0
    assert task.teacher_momentum(5, float("inf")) == 0.99
    before = {k: v.clone() for k, v in task.teacher.named_parameters()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    task.after_optimizer_step(model.encoder, 0, 100)
    online = dict(model.encoder.named_parameters())
    for name, value in task.teacher.named_parameters():
        torch.testing.assert_close(value, 0.99 * before[name] + 0.01 * online[name])


# -- training -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["simclr", "byol"])
def test_label_free_training_runs_and_reports_the_labelled_metrics(tmp_path, loss):
    metrics = run_training(tmp_path, f"loss={loss}", "trainer.max_epochs=1", "data.max_train=256")
    assert 0 < metrics["test/recall@1"] <= 1 and 0 < metrics["test/map@r"] <= 1
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test/recall@1"] == metrics["test/recall@1"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    if loss == "byol":  # the teacher moved off the encoder it was copied from, and is saved
        state = checkpoint["state_dict"]
        teacher = {k.removeprefix("loss.tasks.image.teacher."): v for k, v in state.items() if ".teacher." in k}
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        assert teacher.keys() == encoder.keys()
        assert any(not torch.equal(teacher[k], encoder[k]) for k in teacher if teacher[k].is_floating_point())


# -- DDP: negatives from every rank ----------------------------------------------------------------------------------
def _rank(rank: int, world: int, init_file: str, views: torch.Tensor, out: str) -> None:
    """One rank of two (gloo): the distributed simclr loss of its half of the images, and its gradient."""
    from torch import distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        task = ViewContrastTask(SelfSupervisedLoss(NTXentLoss(temperature=0.2)), distributed=True)
        per_rank = views.shape[1] // world
        mine = torch.arange(rank * per_rank, (rank + 1) * per_rank)
        local = views[:, mine].reshape(-1, views.shape[-1]).clone().requires_grad_(True)
        batch = {VIEW_FIELD: torch.arange(2).repeat_interleave(per_rank), "index": mine.repeat(2)}
        loss = task(local, batch)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local.grad}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_the_negatives_are_the_views_of_every_ranks_images(tmp_path):
    """Two processes, each with half the images: each rank's loss is PML's (the world size times the loss of all the
    images in one process) and its gradient that of all the images, for its own rows, so the gradients DDP averages
    are exactly one process's over the whole batch: every other rank's views are negatives."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    views = torch.randn(2, 12, 5)  # view × image × dimension
    mp.get_context("spawn")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), views, str(tmp_path)), nprocs=2, join=True)
    whole = views.reshape(-1, 5).clone().requires_grad_(True)
    expected = NTXentLoss(temperature=0.2)(whole, torch.arange(12).repeat(2))
    expected.backward()
    grad = whole.grad.view(2, 12, 5)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(result["loss"], 2 * expected.detach())
        mine = slice(rank * 6, (rank + 1) * 6)
        torch.testing.assert_close(result["grad"].view(2, 6, 5), 2 * grad[:, mine])
