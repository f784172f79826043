"""Training any model family on a COCO-format folder: ``train(...) -> TrainResult``.

The loss, the network and its initialisation come from the model's family
(:mod:`rtseg.families`). The loop follows dbolya/yolact ``train.py`` where it matters for results: SGD with momentum 0.9 and
weight decay 5e-4 on every parameter, base lr 1e-3 with a linear warm-up from 1e-4 over 500
iterations, step decay x0.1 (``coco_base_config``), a step is skipped when the loss is not
finite, BatchNorm in train mode (upstream freezes it only when the per-GPU batch is below 6).
Networks start from scratch (:mod:`rtseg.train.init`) because no ImageNet weights can be
fetched here. Decay steps are given as fractions of the run.

Outputs in ``out``: ``last.pth`` and ``iter_<n>.pth`` (training checkpoints: model, optimizer,
iteration, model name, class names), ``<model>_final_fp16.pth`` (the bare float16
state_dict that ships as built-in weights) and ``train_log.jsonl`` (one JSON object per
iteration, plus one per validation). Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from rtseg.errors import CheckpointError, ConfigError
from rtseg.families import family_of
from rtseg.families.base import ModelConfig
from rtseg.models import get_config
from rtseg.models.checkpoint import cast_floating, check_state_dict, read_state_dict

log = logging.getLogger("rtseg.train")

#: consecutive non-finite losses after which training stops (upstream skips them forever)
MAX_NONFINITE_STREAK = 20


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. Losses are floats of the last iteration (and of the
    last validation pass, empty without ``val_data``)."""

    model: str
    start_iteration: int
    iterations: int
    losses: dict[str, float]
    val_losses: dict[str, float]
    last_checkpoint: str
    final_weights: str
    log_path: str
    seconds: float
    skipped_steps: int = 0  #: iterations whose loss was not finite (no optimizer step)
    exit_code: int = field(default=0)


def learning_rate(iteration: int, *, lr: float, iterations: int, warmup_iters: int, warmup_init_lr: float,
                  schedule: str, lr_steps: Sequence[float], gamma: float) -> float:
    """The learning rate used at 0-based ``iteration``.

    Warm-up (upstream ``lr_warmup_until``): linear from ``warmup_init_lr`` at iteration 0 to
    ``lr`` at ``warmup_iters``. Then ``"step"``: ``lr * gamma**k`` where ``k`` counts the
    fractions ``f`` in ``lr_steps`` with ``iteration >= round(f * iterations)``; or
    ``"cosine"``: half a cosine from ``lr`` after warm-up down to 0 at ``iterations``.
    """
    if warmup_iters > 0 and iteration < warmup_iters:
        return warmup_init_lr + (lr - warmup_init_lr) * iteration / warmup_iters
    if schedule == "step":
        return lr * gamma ** sum(iteration >= round(f * iterations) for f in lr_steps)
    span = max(iterations - warmup_iters, 1)
    progress = min(max(iteration - warmup_iters, 0) / span, 1.0)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys for iterations ``start .. stop - 1``.

    The sample stream is the concatenation of ``randperm(n)`` for epochs 0, 1, ... (epoch
    ``e`` seeded by ``(seed, e)``); iteration ``i`` takes stream positions ``[i*B, (i+1)*B)``
    (a batch may span two epochs). So a resumed run sees exactly the batches, and with
    :class:`EpochKeyed` the augmentation draws, that an uninterrupted run would have seen.
    """

    def __init__(self, dataset_len: int, batch_size: int, start: int, stop: int, seed: int) -> None:
        self.n, self.batch_size, self.start, self.stop, self.seed = dataset_len, batch_size, start, stop, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            first = it * self.batch_size
            yield [(p // self.n, self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.batch_size)]

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def init_from_scratch(model: nn.Module) -> None:
    """Initialise ``model`` (any family's network, with a ``cfg``) in place for training
    without pretrained weights: the family's ``init_from_scratch`` (see
    :func:`rtseg.train.init.init_convs`)."""
    family_of(model.cfg).init_from_scratch(model)


def load_matching_weights(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load every tensor of ``path`` whose key and shape match ``model``; keep the model's own
    (fresh) values for class-dependent layers whose shapes differ.

    Returns ``(kept_keys, reinitialised_keys)`` and logs one line saying both. Raises
    :class:`CheckpointError` when a layer that does not depend on the class count differs in
    shape (another architecture), or when nothing matches.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    kept, reinit, wrong = [], [], []
    for k, v in own.items():
        if k not in state:
            continue
        if tuple(state[k].shape) == tuple(v.shape):
            kept.append(k)
        elif k.startswith(family_of(model.cfg).class_dependent_prefixes):
            reinit.append(k)
        else:
            wrong.append(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}")
    if wrong:
        raise CheckpointError(f"init weights '{path}' do not fit model '{model.cfg.name}': mis-shaped (file vs model) "
                              f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    if not kept:
        raise CheckpointError(f"init weights '{path}' share no tensor with model '{model.cfg.name}'")
    subset = {k: state[k] for k in kept}
    check_state_dict_subset_finite(subset, path)
    model.load_state_dict(cast_floating(subset, own), strict=False)
    not_in_file = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    log.info("init weights %s: kept %d of %d tensors; re-initialised %s%s", path, len(kept), len(own),
             ", ".join(reinit) if reinit else "none",
             f"; {len(not_in_file)} not in the file left at fresh init" if not_in_file else "")
    return kept, reinit


def check_state_dict_subset_finite(state: dict[str, torch.Tensor], path: str) -> None:
    """Refuse NaN / infinite values in the tensors about to be loaded."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"init weights '{path}' contain NaN or infinite values in {', '.join(bad[:4])}")


def fp16_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with floating tensors in float16 (on the CPU), for shipping."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            if v.numel() and float(v.abs().max()) > torch.finfo(torch.float16).max:
                raise CheckpointError(f"tensor {k} exceeds the float16 range; cannot export fp16 weights")
            v = v.half()
        out[k] = v
    return out


def _save(obj: object, path: str) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves half a file."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_numbers(**kw) -> None:
    if not isinstance(kw["iterations"], int) or kw["iterations"] < 1:
        raise ConfigError(f"iterations must be an integer >= 1, got {kw['iterations']!r}")
    if not isinstance(kw["batch_size"], int) or kw["batch_size"] < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {kw['batch_size']!r}")
    if not kw["lr"] > 0:
        raise ConfigError(f"learning rate must be > 0, got {kw['lr']!r}")
    if kw["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {kw['optimizer']!r}")
    if kw["schedule"] not in ("step", "cosine"):
        raise ConfigError(f"schedule must be 'step' or 'cosine', got {kw['schedule']!r}")
    if not 0 <= kw["momentum"] < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {kw['momentum']!r}")
    if not kw["weight_decay"] >= 0:
        raise ConfigError(f"weight decay must be >= 0, got {kw['weight_decay']!r}")
    if not isinstance(kw["warmup_iters"], int) or kw["warmup_iters"] < 0:
        raise ConfigError(f"warm-up iterations must be an integer >= 0, got {kw['warmup_iters']!r}")
    if not 0 < kw["warmup_init_lr"] <= kw["lr"]:
        raise ConfigError(f"warm-up initial lr must be in (0, lr={kw['lr']}], got {kw['warmup_init_lr']!r}")
    steps = list(kw["lr_steps"])
    if any(not 0 < f <= 1 for f in steps) or steps != sorted(steps):
        raise ConfigError(f"lr steps must be increasing fractions of the run in (0, 1], got {tuple(steps)}")
    if not 0 < kw["gamma"] <= 1:
        raise ConfigError(f"gamma must be in (0, 1], got {kw['gamma']!r}")
    if not isinstance(kw["checkpoint_every"], int) or kw["checkpoint_every"] < 1:
        raise ConfigError(f"checkpoint interval must be an integer >= 1, got {kw['checkpoint_every']!r}")
    if not isinstance(kw["workers"], int) or kw["workers"] < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {kw['workers']!r}")


def _open_dataset(data: str | Dataset, cfg: ModelConfig, *, augment: bool, seed: int) -> Dataset:
    if not isinstance(data, str):
        return data  # an already-built dataset with the CocoInstanceDataset interface
    from rtseg.data.coco import CocoInstanceDataset  # raises ConfigError for a bad folder

    h, w = cfg.input_size
    if h != w:
        raise ConfigError(f"training needs a square network input, model {cfg.name} takes {h}x{w}")
    preprocess = family_of(cfg).training_preprocess(cfg)  # None: the dataset's own transform
    return CocoInstanceDataset(data, size=h, augment=augment, seed=seed, preprocess=preprocess)


class EpochKeyed(Dataset):
    """``dataset[(epoch, index)]``: selects the dataset's augmentation draws of ``epoch``
    (``CocoInstanceDataset.set_epoch``, when it has one) and returns ``dataset[index]``.
    Works in worker processes too, since the epoch travels with every key."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _collate(batch):
    from rtseg.data.coco import collate

    return collate(batch)


@contextlib.contextmanager
def _batchnorm_eval(model: nn.Module):
    """Train-mode forward (logits and ``segm``) with BatchNorm using and keeping its running stats."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


def _targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


def _prepare_log(path: str, start: int) -> None:
    """A fresh run starts an empty log; a resumed one keeps the records up to its checkpoint
    (dropping those of iterations that will be trained again)."""
    if start == 0 or not os.path.exists(path):
        open(path, "w", encoding="utf-8").close()
        return
    with open(path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("iteration", 0) <= start]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


@contextlib.contextmanager
def _checkpoint_on_interrupt(trained, save):
    """On Ctrl-C, write ``last.pth`` (when anything was trained) so the run can be resumed."""
    try:
        yield
    except KeyboardInterrupt:
        if trained():
            save()
            log.warning("interrupted: progress saved to last.pth; continue with resume")
        raise


def _read_training_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"resume checkpoint '{path}' is not a readable PyTorch checkpoint: {reason[:200]}") from None
    needed = ("model", "optimizer", "iteration", "config")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise CheckpointError(f"'{path}' is not a training checkpoint (needs keys {', '.join(needed)}); "
                              "use init_weights for a weights-only file")
    return ckpt


def _restore_run(path: str, net: nn.Module, opt: torch.optim.Optimizer, cfg: ModelConfig, optimizer: str,
                 iterations: int) -> int:
    """Load model, optimizer and RNG state of a training checkpoint; return its iteration."""
    ckpt = _read_training_checkpoint(path)
    if ckpt["config"] != cfg.name:
        raise CheckpointError(f"resume checkpoint '{path}' is for model '{ckpt['config']}', not '{cfg.name}'")
    saved_classes = tuple(ckpt.get("class_names", cfg.class_names))
    if saved_classes != cfg.class_names:
        raise CheckpointError(f"resume checkpoint '{path}' was trained on classes {saved_classes}, the data has {cfg.class_names}")
    if ckpt.get("optimizer_type", optimizer) != optimizer:
        raise CheckpointError(f"resume checkpoint '{path}' used optimizer '{ckpt['optimizer_type']}', not '{optimizer}'")
    start = int(ckpt["iteration"])
    if start >= iterations:
        raise ConfigError(f"resume checkpoint '{path}' is at iteration {start}; iterations={iterations} leaves nothing to train")
    check_state_dict(net, ckpt["model"], what=f"resume checkpoint '{path}' for model '{cfg.name}'")
    net.load_state_dict(cast_floating(ckpt["model"], net.state_dict()), strict=False)
    opt.load_state_dict(ckpt["optimizer"])
    if "torch_rng_state" in ckpt:
        torch.set_rng_state(ckpt["torch_rng_state"])
    log.info("resuming %s at iteration %d of %d", cfg.name, start, iterations)
    return start


def train(*, model: str | ModelConfig, data: str | Dataset, out: str, iterations: int, batch_size: int = 8,
          lr: float = 1e-3, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
          warmup_iters: int = 500, warmup_init_lr: float = 1e-4, schedule: str = "step",
          lr_steps: Sequence[float] = (0.7, 0.9), gamma: float = 0.1, init_weights: str | None = None,
          resume: str | None = None, val_data: str | Dataset | None = None, checkpoint_every: int = 500,
          seed: int = 0, workers: int = 0, device: str = "cpu", progress: bool = True,
          ) -> TrainResult:
    """Train a model variant of any family for ``iterations`` iterations (in total, counting a resumed run's).

    Args:
        model: a name from ``rtseg models`` (or a config, e.g. a smaller test size); its
            family's loss is used (:mod:`rtseg.families`).
        data: a COCO-format folder (``annotations.json`` + ``images/``), read by
            ``rtseg.data.coco.CocoInstanceDataset`` with augmentation at the model's input size;
            or a dataset object with that interface. If its ``class_names`` differ from the
            model's, the model is built for the dataset's classes.
        out: output folder (created).
        lr, momentum, weight_decay, warmup_iters, warmup_init_lr, schedule, lr_steps, gamma:
            see :func:`learning_rate`; ``lr_steps`` are fractions of ``iterations``.
        optimizer: ``"sgd"`` (upstream) or ``"adamw"``.
        init_weights: start from this weights file, keeping every tensor whose key and shape
            match (fine-tuning; class layers re-initialised when the class count differs).
        resume: continue a run from its training checkpoint (model, optimizer, iteration).
        val_data: a folder (or dataset) for a validation loss at every checkpoint.
        checkpoint_every: iterations between ``iter_<n>.pth`` / ``last.pth`` checkpoints.
        seed: seeds torch, the batch order and the dataset's augmentation.
        workers: DataLoader worker processes (0: load in this process).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        progress: show a progress bar (loss, ETA) on stderr.
    """
    _check_numbers(iterations=iterations, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
                   momentum=momentum, weight_decay=weight_decay, warmup_iters=warmup_iters,
                   warmup_init_lr=warmup_init_lr, lr_steps=lr_steps, gamma=gamma,
                   checkpoint_every=checkpoint_every, workers=workers)
    if init_weights is not None and resume is not None:
        raise ConfigError("give either init_weights (start a new run from weights) or resume (continue a run), not both")
    from rtseg.segmenter import parse_device

    dev = parse_device(device)
    cfg = get_config(model) if isinstance(model, str) else model
    dataset = _open_dataset(data, cfg, augment=True, seed=seed)
    if len(dataset) == 0:
        raise ConfigError(f"training data '{data}' holds no images")
    folder = getattr(dataset, "folder", None)  # a CocoInstanceDataset's CocoFolder
    if folder is not None and getattr(folder, "usable_annotations", 1) == 0:
        raise ConfigError(f"training data '{data}' has no usable annotations: expected at least one non-crowd annotation "
                          f"whose mask has a pixel, found {len(folder.dataset['annotations'])} annotation(s) in "
                          f"{len(folder.images)} image(s)")
    class_names = tuple(getattr(dataset, "class_names", cfg.class_names))
    if class_names != cfg.class_names:
        log.info("dataset classes %s differ from %s's %s: building the model for the dataset's classes",
                 ", ".join(class_names), cfg.name, ", ".join(cfg.class_names))
        cfg = dataclasses.replace(cfg, class_names=class_names)
    val_set = None
    if val_data is not None:
        val_set = _open_dataset(val_data, cfg, augment=False, seed=seed)
        if tuple(getattr(val_set, "class_names", class_names)) != class_names:
            raise ConfigError(f"validation classes {tuple(val_set.class_names)} differ from training classes {class_names}")

    family = family_of(cfg)
    torch.manual_seed(seed)
    net = family.build(cfg)
    family.init_from_scratch(net)
    if init_weights is not None:
        load_matching_weights(net, init_weights)
    net.to(dev).train()
    if optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)

    start = _restore_run(resume, net, opt, cfg, optimizer, iterations) if resume is not None else 0

    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "train_log.jsonl")
    last_path = os.path.join(out, "last.pth")
    final_path = os.path.join(out, f"{cfg.name}_final_fp16.pth")
    sampler = EpochBatchSampler(len(dataset), batch_size, start, iterations, seed)
    # own generator: the loader's seed draw must not shift the global RNG (resume == uninterrupted)
    loader = DataLoader(EpochKeyed(dataset), batch_sampler=sampler, collate_fn=_collate, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    schedule_kw = dict(lr=lr, iterations=iterations, warmup_iters=warmup_iters, warmup_init_lr=warmup_init_lr,
                       schedule=schedule, lr_steps=tuple(lr_steps), gamma=gamma)

    def checkpoint(done: int) -> None:
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "iteration": done, "config": cfg.name,
                 "class_names": list(cfg.class_names), "optimizer_type": optimizer,
                 "torch_rng_state": torch.get_rng_state()}
        _save(state, last_path)
        if done % checkpoint_every == 0:
            _save(state, os.path.join(out, f"iter_{done}.pth"))

    bar = _progress_bar(progress, start, iterations)
    t0 = t_prev = time.perf_counter()
    losses_f: dict[str, float] = {}
    val_losses: dict[str, float] = {}
    skipped = streak = 0
    _prepare_log(log_path, start)
    done = start
    interrupt_guard = _checkpoint_on_interrupt(lambda: done > start, lambda: checkpoint(done))
    with open(log_path, "a", encoding="utf-8") as log_file, interrupt_guard:
        for it, (images, targets) in zip(range(start, iterations), loader):
            if tuple(images.shape[-2:]) != cfg.input_size:
                raise ConfigError(f"training images are {tuple(images.shape[-2:])}, model {cfg.name} expects {cfg.input_size}")
            cur_lr = learning_rate(it, **schedule_kw)
            for group in opt.param_groups:
                group["lr"] = cur_lr
            outputs = net(images.to(dev))
            losses = family.loss(outputs, _targets_to(targets, dev), net, cfg)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            if torch.isfinite(losses["total"]):
                opt.step()
                streak = 0
            else:
                skipped += 1
                streak += 1
                if streak >= MAX_NONFINITE_STREAK:
                    raise ConfigError(f"loss not finite for {streak} iterations in a row (at iteration {it + 1}, "
                                      f"lr {cur_lr:g}); lower the learning rate")
            done = it + 1
            losses_f = {k: float(v.detach()) for k, v in losses.items()}
            # seconds: since the previous iteration ended (data loading included, checkpoints not)
            record = {"iteration": done, **losses_f, "lr": cur_lr, "seconds": round(time.perf_counter() - t_prev, 4)}
            log_file.write(json.dumps(record) + "\n")
            if done % checkpoint_every == 0 or done == iterations:
                checkpoint(done)
                if val_set is not None:
                    val_losses = validation_loss(net, val_set, batch_size, workers)
                    log_file.write(json.dumps({"iteration": done, "val": val_losses}) + "\n")
                log_file.flush()
            bar.update(done, losses_f["total"], cur_lr)
            t_prev = time.perf_counter()
    bar.close()
    _save(fp16_state_dict(net), final_path)
    return TrainResult(model=cfg.name, start_iteration=start, iterations=iterations, losses=losses_f,
                       val_losses=val_losses, last_checkpoint=last_path, final_weights=final_path,
                       log_path=log_path, seconds=time.perf_counter() - t0, skipped_steps=skipped)


@torch.no_grad()
def validation_loss(net: nn.Module, dataset: Dataset, batch_size: int, workers: int = 0) -> dict[str, float]:
    """Mean of each loss term over ``dataset`` (BatchNorm on its running statistics, no gradients).

    The loss's random choices (``masks_to_train`` subsets) use a fixed seed and leave the
    global torch RNG as it was.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate, num_workers=workers)
    dev = next(net.parameters()).device
    family = family_of(net.cfg)
    sums: dict[str, float] = {}
    batches = 0
    with torch.random.fork_rng(devices=[]), _batchnorm_eval(net):
        torch.manual_seed(0)
        for images, targets in loader:
            losses = family.loss(net(images.to(dev)), _targets_to(targets, dev), net, net.cfg)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
    return {k: v / max(batches, 1) for k, v in sums.items()}


class _progress_bar:
    """tqdm on stderr when available and wanted; otherwise a log line every ~5% of the run."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        self._tqdm = None
        self._start, self._total = start, total
        self._every = max((total - start) // 20, 1)
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: fall back to log lines
                return
            self._tqdm = tqdm(total=total, initial=start, file=sys.stderr, unit="it", dynamic_ncols=True,
                              desc="train")

    def update(self, done: int, loss: float, lr: float) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", refresh=False)
            self._tqdm.update(1)
        elif self._enabled and ((done - self._start) % self._every == 0 or done == self._total):
            log.info("iteration %d/%d loss %.4f lr %.3g", done, self._total, loss, lr)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
