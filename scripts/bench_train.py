"""Training throughput (images/s) on real MNIST: simlearn's Lightning loop against a bare PyTorch loop and the naive
torchvision pipeline, plus simlearn's speed options.

    python scripts/bench_train.py                                   # every variant, 150 timed steps each
    python scripts/bench_train.py --steps 50 --variants simlearn bare torchvision
    python scripts/bench_train.py --steps 300 --warmup 20 --repeat 3      # the README's figures
    python scripts/bench_train.py --override loss=triplet data.m_per_class=8   # any config change, all variants

Variants (each in a fresh subprocess, timed over ``--steps`` training steps after ``--warmup`` untimed ones; with
``--repeat N``, N rounds over all variants and each variant's fastest round counts):

- ``simlearn``: Lightning ``Trainer.fit`` on the model of ``simlearn.build.build_model`` with ``data.on_device=true``;
  no validation, sanity check, checkpoints, logger or progress bar, so the measurement is the loop itself.
- ``bare``: a plain PyTorch loop with the same encoder, loss module, optimiser (AdamW from the config), batch size
  and in-memory uint8 images (a shuffled index, then scale and normalise per batch).
- ``torchvision``: ``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize`` through a ``DataLoader``
  (``--num-workers``, default 2) into the same bare loop.
- ``bf16``, ``channels_last``, ``compile``, ``dataloader``: ``simlearn`` with ``trainer.precision=bf16-mixed``,
  ``channels_last=true``, ``compile=true``, or ``data.on_device=false`` (the DataLoader path, ``data.num_workers``
  as configured) — one option each, to see which are worth turning on.

MNIST is read from ``--data-root`` (default ``../shared/data``, the folder holding ``MNIST/raw/``); nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from bench_common import measure_in_subprocess

VARIANTS = ["simlearn", "bare", "torchvision", "bf16", "channels_last", "compile", "dataloader"]
#: simlearn config overrides of each simlearn variant.
SIMLEARN_OVERRIDES = {
    "simlearn": [],
    "bf16": ["trainer.precision=bf16-mixed"],
    "channels_last": ["channels_last=true"],
    "compile": ["compile=true"],
    "dataloader": ["data.on_device=false"],
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def images_per_s(times: list[float], warmup: int, steps: int, batch_size: int) -> float:
    """Throughput over the steps after the warm-up; ``times[i]`` is when step i ended."""
    return steps * batch_size / (times[warmup + steps - 1] - times[warmup - 1])


def compose(spec: dict, output_dir: str, extra: list[str]):
    from simlearn.config import compose_config

    overrides = [
        "data=mnist",
        f"data.root={spec['data_root']}",
        "data.download=false",
        "data.on_device=true",
        f"data.batch_size={spec['batch_size']}",
        "logger=none",
        f"++trainer.accelerator={spec['device']}",
        f"++trainer.max_steps={spec['warmup'] + spec['steps']}",
        "++trainer.max_epochs=1000",  # max_steps ends the run
        "++trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
        "++trainer.enable_checkpointing=false",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        *spec["overrides"],
        *extra,
    ]
    return compose_config(overrides, output_dir=output_dir)


def run_simlearn(spec: dict, extra: list[str], output_dir: str) -> tuple[float, list[float]]:
    import lightning.pytorch as pl

    from simlearn.build import build_datamodule, build_model, build_trainer

    class StepTimes(pl.Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.times: list[float] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter())

    cfg = compose(spec, output_dir, extra)
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule)
    timer = StepTimes()
    trainer = build_trainer(cfg, callbacks=[timer], loggers=[])
    trainer.fit(model, datamodule=datamodule)
    return timer.start, timer.times


def bare_loop(encoder, loss, optimizer, batches, steps: int, device) -> list[float]:
    """The plain PyTorch training loop shared by ``bare`` and ``torchvision``: batches of (images, labels)."""
    encoder.train()
    loss.train()
    times = []
    for _, (images, labels) in zip(range(steps), batches, strict=False):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        total = loss(encoder(images), {"digit": labels})["loss"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return times


def run_bare(spec: dict, torchvision_data: bool, output_dir: str) -> tuple[float, list[float]]:
    import lightning.pytorch as pl

    from simlearn.build import build_datamodule, build_model

    cfg = compose(spec, output_dir, [])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule)  # the same encoder and loss module as simlearn trains
    device = torch.device(spec["device"] if spec["device"] != "gpu" else "cuda")
    encoder, loss = model.encoder.to(device), model.loss.to(device)
    optimizer = model.optimizer_factory(params=list(encoder.parameters()) + list(loss.parameters()))
    total = spec["warmup"] + spec["steps"]
    batch_size = spec["batch_size"]

    if torchvision_data:
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
        dataset = datasets.MNIST(spec["data_root"], train=True, download=False, transform=transform)
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=spec["num_workers"]
        )

        def batches():
            while True:
                yield from loader

    else:
        train = datamodule.datasets["train"]
        images = train.images.to(device)  # uint8 (N, 1, 28, 28): the whole dataset, as simlearn holds it
        labels = train.fields["digit"].to(device)
        index = train.indices.to(device)
        mean, std = train.mean.to(device), train.std.to(device)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

        def batches():
            while True:
                order = index[torch.randperm(len(index), generator=generator, device=device)]
                for start in range(0, len(order) - batch_size + 1, batch_size):
                    chosen = order[start : start + batch_size]
                    yield (images[chosen].float() / 255.0 - mean) / std, labels[chosen]

    start = time.perf_counter()
    return start, bare_loop(encoder, loss, optimizer, batches(), total, device)


def worker(spec: dict) -> dict:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as output_dir:
        if spec["variant"] in SIMLEARN_OVERRIDES:
            start, times = run_simlearn(spec, SIMLEARN_OVERRIDES[spec["variant"]], output_dir)
        else:
            start, times = run_bare(spec, spec["variant"] == "torchvision", output_dir)
    if len(times) < spec["warmup"] + spec["steps"]:
        raise RuntimeError(f"only {len(times)} steps ran, expected {spec['warmup'] + spec['steps']}")
    return {
        "images_per_s": images_per_s(times, spec["warmup"], spec["steps"], spec["batch_size"]),
        "warmup_s": times[spec["warmup"] - 1] - start,
    }


def measure(spec: dict, timeout: float) -> dict:
    return measure_in_subprocess(os.path.abspath(__file__), spec, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, help="what to measure (all)")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding MNIST/raw/ (../shared/data)")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per variant (default 150)")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps before them (default 15)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128, as data=mnist)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of 'torchvision' (2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where to train (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--override", nargs="*", default=[], help="extra simlearn config overrides, every variant")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per variant (default 900)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all variants; the fastest counts (1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.warmup < 1 or args.steps < 1 or args.repeat < 1:
        parser.error("--warmup, --steps and --repeat must be at least 1")
    data_root = os.path.abspath(args.data_root)
    if not os.path.isdir(os.path.join(data_root, "MNIST", "raw")):
        parser.error(f"no MNIST/raw/ under --data-root {data_root}")
    print(
        f"# bench_train: MNIST, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, "
        f"{args.device}, {args.threads or torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    spec = {
        "data_root": data_root,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "threads": args.threads,
        "overrides": args.override,
    }
    results: dict[str, dict] = {}
    # rounds over all variants rather than one variant's repeats back to back, so that a slow spell of a shared
    # machine does not hit one variant only; each variant's fastest round counts
    for round_number in range(1, args.repeat + 1):
        for variant in args.variants:
            result = measure({**spec, "variant": variant}, args.timeout)
            best = results.get(variant)
            if (
                best is None
                or "error" in best
                or ("error" not in result and result["images_per_s"] > best["images_per_s"])
            ):
                results[variant] = result
            shown = f"{result['images_per_s']:.0f} images/s" if "error" not in result else f"FAILED {result['error']}"
            print(f"  round {round_number} {variant}: {shown}", flush=True)

    def rate(name: str) -> float | None:
        result = results.get(name)
        return result["images_per_s"] if result and "error" not in result else None

    descriptions = {
        "simlearn": "(a) simlearn: Lightning fit, data.on_device=true",
        "bare": "(b) bare PyTorch loop, same model/loss/optimiser/data",
        "torchvision": f"(c) torchvision MNIST + ToTensor/Normalize + DataLoader({args.num_workers} workers)",
        "bf16": "(a) + trainer.precision=bf16-mixed",
        "channels_last": "(a) + channels_last=true",
        "compile": "(a) + compile=true",
        "dataloader": "(a) with data.on_device=false (DataLoader)",
    }
    base = rate("simlearn")
    print(f"\n| variant | images/s | ÷ (a) simlearn | first {args.warmup} steps, s (start-up, compilation) |")
    print("| --- | --- | --- | --- |")
    for variant, result in results.items():
        value = rate(variant)
        shown = f"{value:.0f}" if value else "failed"
        ratio = f"{value / base:.2f}" if value and base else "n/a"
        warmup = f"{result['warmup_s']:.1f}" if value else "n/a"
        print(f"| {descriptions[variant]} | {shown} | {ratio} | {warmup} |")
    for other, label, target in (("bare", "(a)/(b)", 0.9), ("torchvision", "(a)/(c)", 1.2)):
        if base and rate(other):
            ratio = base / rate(other)
            print(f"\n{label} = {ratio:.2f} (target ≥ {target}: {'met' if ratio >= target else 'NOT met'})", end="")
    print()
    failed = [v for v, r in results.items() if "error" in r]
    for variant in failed:
        print(f"FAILED: {variant}: {results[variant]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
