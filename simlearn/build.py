"""Turning a composed config into objects: model, datamodule, callbacks, loggers, trainer; all of them at once,
every placeholder filled, by :func:`build_run`."""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import get_object, instantiate
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from simlearn.data.base import CROP_KEYS, EmbeddingDataModule
from simlearn.errors import UserError
from simlearn.models import EmbeddingModule, Encoder
from simlearn.models.backbones import Backbone
from simlearn.organise.duplicates import check_threshold
from simlearn.schema import check_config as check_types
from simlearn.schema import signature_hints

log = logging.getLogger(__name__)

#: The parts of a run's config a checkpoint needs to rebuild its model and data.
MODEL_KEYS = (
    "data",
    "backbone",
    "head",
    "loss",
    "optimizer",
    "scheduler",
    "evaluation",
    "reports",
    "seed",
    "compile",
    "channels_last",
)


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type before anything is built, naming the key, the expected type and an example.

    The types come from one schema, the signatures of the classes the config builds (:mod:`simlearn.schema`). First
    the data keys left null for the model are filled in (:func:`fill_preprocessing`).
    """
    fill_preprocessing(cfg)
    check_types(cfg)
    ks = OmegaConf.select(cfg, "evaluation.ks", default=None)
    if ks is not None and (not OmegaConf.is_list(ks) or not ks or not all(isinstance(k, int) and k >= 1 for k in ks)):
        raise UserError(
            f"evaluation.ks must be a non-empty list of integers ≥ 1, got {ks}; e.g. evaluation.ks=[1,5,10]."
        )
    leak_threshold = OmegaConf.select(cfg, "reports.leaks.threshold", default=None)
    if leak_threshold is not None:  # checked now, not after the training the leak check runs after
        check_threshold(leak_threshold, "reports.leaks.threshold")


#: Data keys that may be left null for the model to fill (:meth:`Backbone.preprocessing`).
PREPROCESSING_KEYS = ("image_size", "mean", "std", *CROP_KEYS)
#: Backbone keys that fetch pretrained weights, and their off values: a checkpoint's own weights replace them.
FETCH_KEYS = {"pretrained": False, "checkpoint_path": None}
#: Backbone keys that fetch or pin weights: off while a backbone is built only to ask what input it expects.
WEIGHT_KEYS = {**FETCH_KEYS, "freeze": False}


def fill_preprocessing(cfg: DictConfig, declared: Mapping[str, Any] | None = None) -> None:
    """Set the data keys left null (``data.image_size``, ``data.mean``, ``data.std``, ``data.crop_pct``,
    ``data.interpolation``) to what the model expects.

    What it expects is ``declared`` when given, else the preprocessing a checkpoint's config stored (the model was
    trained with it), else what the backbone declares (:meth:`Backbone.preprocessing`: a timm model's pretrained
    config, torchvision's 224 pixels and ImageNet statistics). A key the data config sets is kept; a key nothing
    declares keeps the data's own default (image size: the data class's default; mean/std: ImageNet's for image
    files, measured on the training split for in-memory data, whose configs leave the keys out; crop and
    interpolation: null, the full square, bilinear, which is also what a checkpoint that records none was trained
    with). A backbone whose
    config reads ``data.image_size`` (small_cnn) follows the data and declares none.
    """
    data = cfg.get("data")
    if not OmegaConf.is_dict(data) or "_target_" not in data:
        return
    open_keys = [key for key in PREPROCESSING_KEYS if key in data and data[key] is None]
    if not open_keys:
        return
    if declared is None:
        declared = cfg.get("preprocessing")  # a checkpoint's config: what its model was trained with
    if declared is None:
        backbone = cfg.get("backbone")
        if (
            "image_size" in open_keys
            and OmegaConf.is_dict(backbone)
            and "data.image_size" in OmegaConf.to_yaml(backbone)
        ):
            # the backbone takes its input size from the data (small_cnn): the data's default, before it is built
            data.image_size = int(data_default(data, "image_size"))
            open_keys.remove("image_size")
        declared = backbone_preprocessing(cfg) if open_keys else {}
    if "image_size" in open_keys:
        size = declared.get("image_size")
        if size is None:
            size = data_default(data, "image_size")
        data.image_size = int(size)
    mean, std = declared.get("mean"), declared.get("std")
    channels = data.get("channels")
    # one value per channel, or RGB statistics for grey data (data.base.channel_stats averages them)
    fits = mean is not None and std is not None and len(mean) == len(std) and channels in (len(mean), 1)
    if "mean" in open_keys and "std" in open_keys and fits:
        data.mean, data.std = [float(v) for v in mean], [float(v) for v in std]
    for key in CROP_KEYS:
        if key in open_keys and declared.get(key) is not None:
            data[key] = declared[key]


def backbone_preprocessing(cfg: DictConfig) -> dict[str, Any]:
    """What the configured backbone declares of its input (:meth:`Backbone.preprocessing`), asked of a backbone
    built without weights on the meta device (no memory, no download; on the CPU if an architecture cannot)."""
    backbone_cfg = cfg.get("backbone")
    if not OmegaConf.is_dict(backbone_cfg) or "_target_" not in backbone_cfg:
        return {}
    overrides = {key: value for key, value in WEIGHT_KEYS.items() if key in backbone_cfg}
    try:
        with torch.device("meta"):
            backbone = instantiate(backbone_cfg, **overrides)
    except Exception as error:
        if isinstance(error, UserError) or isinstance(error.__cause__, UserError):
            raise  # a bad backbone config (a misspelt timm name): said once, now
        # an architecture whose construction reads tensor values, which meta tensors do not have
        backbone = instantiate(backbone_cfg, **overrides)
    return dict(backbone.preprocessing()) if isinstance(backbone, Backbone) else {}


def data_default(data: DictConfig, key: str) -> Any:
    """The default of ``key`` in the signature of the data class (``data._target_``)."""
    hints = signature_hints(get_object(data._target_))
    default = hints.get(key, (None, None))[1]
    if default is None or default is inspect.Parameter.empty:
        raise UserError(f"data.{key} is null and neither the backbone nor the data gives one; set data.{key}.")
    return default


#: Config keys a composed config leaves null for a builder to fill, and what fills each: a builder that meets one
#: still null says so (:func:`unfilled`) instead of failing deep inside torchvision or PML.
PLACEHOLDERS = {
    "data.image_size": "simlearn.build.fill_preprocessing(cfg) (from the backbone; simlearn.build.check_config "
    "calls it)",
    "data.num_classes": "simlearn.build.build_model(cfg, datamodule) (the training split's classes, "
    "datamodule.num_train_classes)",
    "head.out_dim": "simlearn.build.build_model(cfg, datamodule) (the encoder's embedding size: the backbone's "
    "out_features under head=identity)",
}
#: Loss arguments that size its parameters: null is never a valid value, whatever the config reads them from.
LOSS_SIZE_KEYS = ("num_classes", "embedding_size", "embedding_dim")


def unfilled(key: str, builder: str, placeholder: str | None = None) -> UserError:
    """The one-line refusal of ``builder`` to build while ``key`` is null. ``placeholder``: the key of
    :data:`PLACEHOLDERS` that ``key`` reads (``key`` itself when it is one)."""
    placeholder = placeholder or (key if key in PLACEHOLDERS else None)
    if placeholder is None:  # a size set to null in the config itself: nothing fills it
        return UserError(f"{key} is null and {builder} needs a number; set {key}=N in the config.")
    reads = f" (it reads {placeholder})" if placeholder != key else ""
    return UserError(
        f"{key} is null{reads} and {builder} needs a value; {placeholder} is filled by {PLACEHOLDERS[placeholder]}. "
        f"Build through simlearn.build.build_run(cfg) or simlearn.run(...), which fill every placeholder in order, "
        f"or set {placeholder}=VALUE."
    )


def build_datamodule(data_cfg: DictConfig) -> EmbeddingDataModule:
    """Instantiate and set up the data now, so that data errors appear before any training starts.

    ``data.image_size`` left null (the photo datasets' default) must have been filled first
    (:func:`fill_preprocessing`, or :func:`build_run`); it is refused here otherwise."""
    if "image_size" in data_cfg and data_cfg.image_size is None:
        raise unfilled("data.image_size", "simlearn.build.build_datamodule")
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_encoder(cfg: DictConfig | Mapping[str, Any]) -> Encoder:
    """Backbone and projection head from the ``backbone`` and ``head`` configs; the head is sized from the
    backbone's declared ``out_features`` (:class:`~simlearn.models.backbones.Backbone`)."""
    backbone = instantiate(cfg["backbone"])
    if not isinstance(backbone, Backbone):
        raise UserError(
            f"backbone._target_={cfg['backbone'].get('_target_')} built a {type(backbone).__name__}, which is not a "
            f"simlearn.models.backbones.Backbone; subclass it (set out_features, implement forward)."
        )
    return Encoder(backbone, instantiate(cfg["head"], in_features=backbone.out_features))


def build_model(cfg: DictConfig, datamodule: EmbeddingDataModule, check_training: bool = True) -> EmbeddingModule:
    """Encoder (backbone + head), loss and optimiser from the config, checked against the training split's label
    fields (``check_training``; off to evaluate a checkpoint on other data: its classifier keeps the size it was
    trained with, and classes it was never given are not scored)."""
    if "num_classes" in cfg.data and cfg.data.num_classes is None:
        # classifier-style losses (${data.num_classes}) are sized from the classes the training split holds
        cfg.data.num_classes = datamodule.num_train_classes
    encoder = build_encoder(cfg)
    if "out_dim" in cfg.head and cfg.head.out_dim is None:
        # head=identity: the embeddings are the backbone's features; losses sized by ${head.out_dim} read that size
        cfg.head.out_dim = encoder.embedding_dim
    model = EmbeddingModule(
        encoder=encoder,
        loss=build_loss(cfg),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        evaluator=instantiate(cfg.evaluation),
        compile=bool(cfg.get("compile", False)),
        channels_last=bool(cfg.get("channels_last", False)),
        config={key: resolved(cfg, key) for key in MODEL_KEYS if key in cfg},
    )
    model.config["preprocessing"] = datamodule.preprocessing()
    if check_training:
        if datamodule.trains_without_labels:
            check_label_free(model, datamodule)
        check_views(model, datamodule)
        train = datamodule.datasets["train"]
        model.loss.check_fields({name: train.labels(name) for name in train.fields})
    return model


def check_views(model: EmbeddingModule, datamodule: EmbeddingDataModule) -> None:
    """One line, before anything is trained or written, when a loss compares views of each image but the data makes
    one (``data.views=1``): caught at the first step it would leave a claimed run dir behind."""
    for task in model.loss.tasks.values():
        wanted = getattr(task, "views", None)
        if isinstance(wanted, int) and wanted >= 2 and getattr(datamodule, "views", 1) < 2:
            raise UserError(
                f"this label-free loss compares {wanted} views of each image, but data.views="
                f"{getattr(datamodule, 'views', 1)} makes one image per item; set data.views={wanted} (it follows "
                f"loss.views unless data.views is given)."
            )


def check_label_free(model: EmbeddingModule, datamodule: EmbeddingDataModule) -> None:
    """One line when the loss reads a label but the training batches carry none (``data.labels=none``, or data
    without labels). A task that reads only the images (``Task.reads_image``: the autoencoder) trains without."""
    needs = {name: task for name, task in model.loss.tasks.items() if not task.reads_image}
    if not needs:
        return
    name, task = next(iter(needs.items()))
    why = (
        "data.labels=none trains without labels"
        if datamodule.labelled
        else f"data '{datamodule.name}' has no labels (images directly in its root, no class folders)"
    )
    raise UserError(
        f"the loss task {name!r} ({type(getattr(task, 'loss', task)).__name__}) reads the label field {task.field!r}, "
        f"but {why}; use a loss that needs no label (loss=simclr, vicreg, byol or reconstruction)"
        + (", or drop data.labels=none." if datamodule.labelled else ".")
    )


def init_encoder(model: EmbeddingModule, path: str) -> None:
    """``init_from=<ckpt>``: the encoder starts from the encoder weights of a simlearn checkpoint (e.g. a label-free
    pre-training run's), refused in one line when they do not fit this run's backbone and head."""
    # imported here: simlearn.checkpoints.restoring builds models through this module
    from simlearn.checkpoints.restoring import load_checkpoint
    from simlearn.models.backbones import load_weights

    checkpoint = load_checkpoint(path, option="init_from")
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    load_weights(
        model.encoder,
        state,
        f"init_from={path}: its encoder weights",
        "give init_from a checkpoint of the same backbone and head (e.g. the same backbone=, head.out_dim=), or "
        "set these to the checkpoint's (its run's config.yaml)",
    )
    for task in model.loss.tasks.values():
        teacher = getattr(task, "teacher", None)
        if isinstance(teacher, torch.nn.Module):  # a momentum teacher starts as the loaded encoder, not a random one
            teacher.load_state_dict(model.encoder.state_dict())
    log.info("encoder initialised from %s", path)


#: Checkpoint monitors of labelled metrics, and what an unlabelled run monitors instead.
LABEL_FREE_MONITOR = "val/copy/recall@1"


def monitor_label_free(cfg: DictConfig) -> None:
    """Data without labels has no ``val/recall@1``: the checkpoint callbacks that monitor a labelled validation
    metric monitor ``val/copy/recall@1`` instead, and ``optimized_metric`` follows (said once in the log)."""
    label_free = ("copy/", "alignment", "uniformity", "effective_rank", "mean_cosine")
    changed = []
    for entry in (cfg.get("callbacks") or {}).values():
        monitor = entry.get("monitor") if OmegaConf.is_dict(entry) else None
        if isinstance(monitor, str) and monitor.startswith("val/") and not monitor[4:].startswith(label_free):
            changed.append(monitor)
            entry.monitor = LABEL_FREE_MONITOR
            if "mode" in entry:
                entry.mode = "max"
    optimized = cfg.get("optimized_metric")
    if isinstance(optimized, str) and optimized.startswith("val/") and changed:
        cfg.optimized_metric = LABEL_FREE_MONITOR.replace("/", "/best_", 1)
    if changed:
        log.info("data without labels: checkpoints monitor %s instead of %s", LABEL_FREE_MONITOR, changed[0])


def build_loss(cfg: DictConfig) -> Any:
    """The loss of ``cfg.loss``, refused in one line while a size it needs is null: ``data.num_classes`` and
    ``head.out_dim`` are filled by :func:`build_model`, which builds the loss through here once they are."""
    for key, placeholder in _null_sizes(cfg, cfg.loss, "loss"):
        raise unfilled(key, "simlearn.build.build_loss", placeholder)
    return instantiate(cfg.loss)


#: ``${key}``: an argument that is exactly another key's value.
_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _null_sizes(cfg: DictConfig, node: Any, path: str) -> Iterator[tuple[str, str | None]]:
    """Each key under ``node`` that is null and should not be: one that reads a placeholder of
    :data:`PLACEHOLDERS` still null (with that placeholder), or a size argument (:data:`LOSS_SIZE_KEYS`) set to
    null (with None)."""
    if OmegaConf.is_dict(node):
        keys = [key for key in node if isinstance(key, str)]
    elif OmegaConf.is_list(node):
        keys = list(range(len(node)))
    else:
        return
    for key in keys:
        key_path = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        raw = node._get_node(key)._value()  # the value as written: an interpolation stays "${...}"
        match = _INTERPOLATION.match(raw) if isinstance(raw, str) else None
        if match and match.group(1) in PLACEHOLDERS and OmegaConf.select(cfg, match.group(1)) is None:
            yield key_path, match.group(1)
        elif raw is None and key in LOSS_SIZE_KEYS:
            yield key_path, None
        elif OmegaConf.is_config(node[key]):
            yield from _null_sizes(cfg, node[key], key_path)


def resolved(cfg: DictConfig, key: str) -> Any:
    """One key of the config with its interpolations resolved against the whole config."""
    node = cfg[key]
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_list(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any], launched: bool = False) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer``, with these callbacks and loggers.

    A strategy whose launcher starts the ranks as new processes from inside ``fit()`` and ``test()`` (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``; Lightning picks ``ddp_fork`` itself for several devices in a notebook) would keep
    the embeddings and metrics those processes compute to themselves. Training runs the whole run (fit, test, the
    run's files) in the processes that launcher starts (:func:`spawn_launcher`); there it builds its Trainer with
    ``launched`` true, which makes the Trainer run fit and test in the process it is in. Anywhere else such a
    strategy is refused with one line.
    """
    _check_accelerator(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        if not launched:
            raise UserError(
                f"trainer.strategy={_strategy_name(cfg)} starts its processes inside each test, and they keep the test "
                f"results to themselves; only training supports it (simlearn-train). Use trainer=ddp here (the "
                f"launcher starts one process per device, e.g. trainer=ddp trainer.accelerator=cpu trainer.devices=2)."
            )
        # this process is one of the ranks that launcher started: fit and test run here. Lightning has no public
        # switch for it; without a launcher its Trainer calls fit/test directly, as in a process DDP started itself
        trainer.strategy._launcher = None
    return trainer


def spawn_launcher(cfg: DictConfig) -> _Launcher | None:
    """The launcher of ``cfg.trainer``'s strategy when it starts its ranks from inside this process (spawn, fork or
    forkserver: ``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``), else None (one process, or DDP's own launcher, which
    runs the command line again per rank). Asked of a Trainer built for it alone (no callbacks, no loggers)."""
    _check_accelerator(cfg)
    # its device summary ("GPU available: ...") is printed by the Trainer of the run, once
    with _quiet_lightning():
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
    launcher = trainer.strategy.launcher
    return launcher if isinstance(launcher, _MultiProcessingLauncher) else None


def _check_accelerator(cfg: DictConfig) -> None:
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={cfg.trainer.accelerator} asks for a GPU, but PyTorch sees none "
            f"(torch.cuda.is_available() is False). Use trainer=default (GPU when present, else CPU) or trainer=cpu."
        )


def run_output_dir(cfg: DictConfig) -> Path:
    """The run dir, ``paths.output_dir``: Hydra's run dir under a command, given by the caller outside one."""
    output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
    if not output_dir:
        raise UserError(
            "paths.output_dir is unset: it is Hydra's run dir, and no Hydra run is active here; give the run dir "
            "yourself: simlearn.run(..., output_dir=DIR), compose_config(..., output_dir=DIR) or paths.output_dir=DIR."
        )
    return Path(output_dir)


@dataclass
class Run:
    """A training run's objects, built from one config with every placeholder filled (:func:`build_run`).

    ``metrics`` is the flat metric dict of a finished run (``val/…``, ``test/…``, ``train/…``, as in its
    ``metrics.json``) and ``best_path`` its best checkpoint: empty until it is trained and tested
    (:func:`simlearn.train.train_run`, :func:`simlearn.run`). Under a strategy that trains in processes it starts
    (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) the launching process's run has no ``datamodule``, ``model`` or
    ``trainer`` (None: they lived in those processes), only the config, metrics and best checkpoint.
    """

    cfg: DictConfig
    output_dir: Path
    datamodule: EmbeddingDataModule | None
    model: EmbeddingModule | None
    trainer: pl.Trainer | None
    callbacks: list[Any]
    loggers: list[Any]
    metrics: dict[str, float] = field(default_factory=dict)
    best_path: str = ""


def build_run(cfg: DictConfig, launched: bool = False) -> Run:
    """Everything a training run needs, from one composed config, in the order that fills its placeholders: the
    data keys from the backbone (:func:`check_config`), the data, the model (``data.num_classes``,
    ``head.out_dim``), callbacks, loggers and trainer. Seeds everything with ``cfg.seed`` first; writes nothing.
    ``cfg`` is filled in place. This is what ``python train.py`` builds (:func:`simlearn.train.train_run`);
    ``launched``: in a process that a spawn/fork strategy's launcher started (:func:`build_trainer`)."""
    output_dir = run_output_dir(cfg)
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule)
    if cfg.get("init_from"):
        init_encoder(model, str(cfg.init_from))
    if not datamodule.labelled:
        monitor_label_free(cfg)
    callbacks = build_list(cfg.get("callbacks"))
    loggers = build_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers, launched=launched)
    return Run(cfg, output_dir, datamodule, model, trainer, callbacks, loggers)


def _strategy_name(cfg: DictConfig) -> str:
    strategy = cfg.trainer.get("strategy")
    if OmegaConf.is_dict(strategy):
        return f"{strategy.get('_target_')} (start_method={strategy.get('start_method')})"
    return str(strategy)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
