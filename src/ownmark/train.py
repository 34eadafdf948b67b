"""The one training loop: clean training, watermark embedding and the fine-tuning attack.

Embedding follows Zhang et al. 2018: train on the normal training data mixed with the key
samples (labelled with the key label), from scratch or starting from a trained model.
Training parameters default to the paper's Table 7 (SGD, learning rate 0.01, batch 128,
50 epochs; dropout is part of the model). Momentum is not in the table; we use 0.9 as the
Carlini–Wagner code that Table 6's networks come from.

Determinism: each epoch draws its shuffle and its dropout masks from generators seeded by
``(seed, epoch)``, and a checkpoint holds model and optimizer state; so on CPU a run resumed
from the checkpoint of epoch e ends with the same weights as an uninterrupted run. A checkpoint
written inside an epoch (``checkpoint_every``) also holds the position in the epoch, the random
generators' states and the epoch's running sums, so resuming from it is just as exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.fileio import atomic_path
from ownmark.keys import KeySet
from ownmark.metrics import accuracy, to_float_images


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    Attributes:
        epochs: passes over the training data (default 50, Table 7).
        batch_size: default 128 (Table 7).
        lr: SGD learning rate (default 0.01, Table 7).
        momentum: SGD momentum (default 0.9).
        weight_decay: L2 penalty (default 0).
        seed: seeds shuffling and dropout (default 0).
        key_ratio: when embedding, the fraction of each epoch's samples that are key samples;
            the key set is repeated to reach it (default 0.15, ~18% more work per epoch). The
            paper's single-class keys learn at 0.05; ownmark's default secret keys map every
            class to its own key label, which needs more repetitions (on the built-in digits,
            8 epochs: noise keys reach 13% watermark accuracy at 0.05, 99% at 0.15).
        augment: random 4-pixel-shift crops and horizontal flips (for CIFAR; default off).
        device: torch device (default ``cpu``); ``auto`` picks CUDA, then MPS, then the CPU
            (see :func:`resolve_device`) and is resolved when the config is made, so
            ``config.device`` always names the device the run uses.
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    key_ratio: float = 0.15
    augment: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if not 0.0 <= self.key_ratio < 1.0:
            raise ConfigError(f"key_ratio must lie in [0, 1), got {self.key_ratio}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight_decay must be >= 0")
        # Frozen dataclass: the resolved name replaces "auto" once, here.
        object.__setattr__(self, "device", resolve_device(self.device))


def resolve_device(name: str) -> str:
    """The torch device ``name`` means here: ``auto`` is CUDA, then MPS, then ``cpu``.

    Any other name is checked (a known device type, and present on this machine) and returned
    as given. Raises ConfigError for an unknown or absent device, so a run fails before it
    loads data rather than when the model moves to the device.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown torch device {name!r}; use auto, cpu, cuda, cuda:1, mps ..."
        ) from None
    if device.type == "cuda" and (
        not torch.cuda.is_available()
        or (device.index is not None and device.index >= torch.cuda.device_count())
    ):
        raise ConfigError(f"device {name!r} is not available on this machine; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available on this machine; use auto or cpu")
    return name


class Objective(Protocol):
    """A training step's loss: ``(model, images, labels, is_key) -> (loss, logits)``.

    ``images`` are float images in [0, 1] (augmented when asked), ``is_key`` marks the rows that
    are key samples. A scheme supplies one through
    :meth:`~ownmark.schemes.base.WatermarkScheme.objective` to add terms (a metric loss on
    trigger features, a jointly trained encoder); the default is :func:`cross_entropy`.
    """

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def cross_entropy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default objective: plain cross-entropy on the mix (Zhang et al. 2018)."""
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


@dataclass
class TrainResult:
    """What a training run measured."""

    epochs: int
    seconds: float
    test_accuracy: float | None
    watermark_accuracy: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def key_repeats(num_train: int, num_keys: int, key_ratio: float) -> int:
    """How often the key set is repeated per epoch so keys make up ``key_ratio`` of it."""
    if key_ratio <= 0 or num_keys == 0:
        return 0
    return max(1, math.ceil(key_ratio * num_train / ((1.0 - key_ratio) * num_keys)))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 4 pixels (zero padding) and horizontal flips, per image.

    The random draws come from the CPU ``generator`` (so runs are seeded the same on every
    device); the cropping is one gather on the batch's own device, with no per-image loop.
    """
    n, channels, h, w = batch.shape
    padded = F.pad(batch, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).to(batch.device)
    dx = torch.randint(0, 9, (n,), generator=generator).to(batch.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
    cols = torch.arange(w, device=batch.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)  # a flip reads columns backwards
    rows = dy[:, None] + torch.arange(h, device=batch.device)
    cols = dx[:, None] + cols
    return padded[
        torch.arange(n, device=batch.device)[:, None, None, None],
        torch.arange(channels, device=batch.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


# glibc's mallopt parameters (malloc.h) and the values fit uses; see _keep_freed_memory.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64 bit)
_TRAINING_TRIM_THRESHOLD = 1 << 30
_AFTER_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD  # where glibc's own adjustment ends up


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (whose malloc we know how to tune), else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
    except (AttributeError, ValueError, OSError):  # not glibc, or no confstr at all (Windows)
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def _keep_freed_memory() -> Iterator[None]:
    """While training, keep the memory a step frees for the next step instead of giving it back.

    Why: every step allocates and frees the same activations and gradients, several MB each.
    By default glibc returns large blocks to the kernel (blocks over its mmap threshold at once,
    the top of the heap once more than the trim threshold is free); the next step then faults
    them in again, zero-filled. Its thresholds adapt to what a process freed before, so one
    process did this and the next did not: on full MNIST (``zhang_mnist``, batch 128, 2 cores)
    up to 10,000 page faults and 15 ms of system time per step of about 50 ms, against under
    1,000 faults and 1 ms with the thresholds fixed as here (one epoch, whole process: 7 to 13 s
    of system time before, 2 s after; benchmarks/overhead.py). The cost: up to the peak memory of a
    step stays with the process until training ends. Afterwards the free memory is handed back
    (``malloc_trim``) and the trim threshold lowered to where glibc's adjustment ends up
    (twice the mmap threshold); the mmap threshold stays at 32 MiB, glibc's own ceiling.
    Results do not change: torch aligns every tensor to 64 bytes whatever malloc returns.

    Nothing is done off glibc, or where the user tuned malloc through glibc's environment
    (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ..., ``GLIBC_TUNABLES``).
    """
    libc = _glibc()
    tuned = any(name.startswith("MALLOC_") for name in os.environ) or (
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    )
    if libc is None or tuned:
        yield
        return
    # Both at once: fixing one turns glibc's adjustment of the other off, which is worse.
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRAINING_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
        libc.malloc_trim(0)


#: Largest float32 copy of the training images that fit makes up front (see _batch_source).
_CONVERT_ONCE_MAX_BYTES = 1 << 30


def _batch_source(images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``index -> float batch in [0, 1]`` for the uint8 training ``images``.

    The images are converted to float once, so a step does one gather instead of a gather, a
    conversion and a division, each a pass over the batch with its own allocation and, on CPU,
    its own multi-threaded section; with another process on the cores each such section can
    wait for a time slice. Converting first and gathering after gives the same floats bit for
    bit (both are exact per-pixel operations). It costs four times the uint8 images' memory for
    the run (full MNIST 188 MB, CIFAR-10 614 MB, more with key repetitions); above
    :data:`_CONVERT_ONCE_MAX_BYTES` batches are converted one by one as before.
    """
    if images.numel() * 4 <= _CONVERT_ONCE_MAX_BYTES:
        converted = to_float_images(images)
        return lambda index: converted[index]
    return lambda index: to_float_images(images[index])


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


log = logging.getLogger("ownmark.train")


def check_checkpoint(checkpoint: str | Path | None, resume: bool) -> None:
    """Refuse a run that would silently overwrite a checkpoint or silently start over.

    Cheap (file system only): :func:`fit` calls it first, and the CLI before it loads any data.

    Raises:
        ConfigError: ``resume`` without a ``checkpoint`` file, a ``checkpoint`` that is a
            folder, or an existing ``checkpoint`` without ``resume``.
    """
    if checkpoint is None:
        if resume:
            raise ConfigError("--resume needs --checkpoint FILE, the checkpoint to continue")
        return
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(
            f"--checkpoint {path} is a folder; give a file name, e.g. {path / 'run.ckpt'}"
        )
    if resume and not path.is_file():
        raise ConfigError(
            f"--resume: checkpoint {path} does not exist; drop --resume to start a new run"
        )
    if not resume and path.exists():
        raise ConfigError(
            f"checkpoint {path} already exists: add --resume to continue it, or delete it "
            "(or choose another --checkpoint) to start over"
        )


def _fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes: a checkpoint is only resumed on the very same data."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().data)  # a view, no copy
    return digest.hexdigest()


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global generators that dropout draws from: the CPU's and the device's own."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def _set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    elif "mps" in states and device.type == "mps":
        torch.mps.set_rng_state(states["mps"])


def fit(
    model: nn.Module,
    train: ImageDataset,
    config: TrainConfig,
    *,
    test: ImageDataset | None = None,
    key: KeySet | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    description: str = "train",
    objective: Objective | None = None,
    checkpoint_every: int | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train`` (mixed with ``key`` if given) and evaluate it.

    Args:
        model: a classifier taking float images in [0, 1].
        train: training data.
        config: hyper-parameters.
        test: data for the test accuracy reported per epoch and at the end.
        key: key samples to embed; they are repeated to make up ``config.key_ratio``.
        checkpoint: file written atomically after every epoch (model, optimizer, history);
            default None: none. It must not exist yet unless ``resume`` is set.
        resume: continue from ``checkpoint``, which must exist and have been written with the
            same config and data (default False: start a new run).
        progress: show a progress bar with loss and accuracy (stderr).
        description: label of the progress bar.
        objective: the loss of a step; None (default): the key's scheme's objective when a
            key is given (see :meth:`~ownmark.schemes.base.WatermarkScheme.objective`), else
            :func:`cross_entropy`.
        checkpoint_every: also write ``checkpoint`` after every this many optimizer steps
            (counted from the start of the run); default None: at the end of each epoch only.
            Resuming from a checkpoint inside an epoch ends, on CPU, with the same weights as
            an uninterrupted run.
        report: called with one line saying where a resumed run resumes; default None: the
            line is logged (logger ``ownmark.train``, level INFO).

    Raises:
        ConfigError: see :func:`check_checkpoint`; a checkpoint of another config or data; a
            key whose images do not match the data; ``checkpoint_every`` < 1.
    """
    check_checkpoint(checkpoint, resume)
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1 step, got {checkpoint_every}")
    if objective is None and key is not None:
        from ownmark.schemes import scheme_for_key  # the schemes import keys, not training

        objective = scheme_for_key(key).objective(key)
    step_loss: Objective = objective or cross_entropy
    device = torch.device(config.device)
    num_clean = len(train)
    model.to(device)
    images, labels = train.images, train.labels
    repeats = 0
    if key is not None:
        if key.image_shape != train.image_shape:
            raise ConfigError(
                f"key images are {key.image_shape} but training images are {train.image_shape}"
            )
        repeats = key_repeats(len(train), len(key), config.key_ratio)
        images = torch.cat([images, key.images.repeat(repeats, 1, 1, 1)])
        labels = torch.cat([labels, key.labels.repeat(repeats)])
    # Hashed only when there is a checkpoint to match (a fraction of a second on full MNIST).
    data_hash = _fingerprint(images, labels) if checkpoint is not None else None
    labels = labels.to(device)
    num_images = len(images)
    steps = math.ceil(num_images / config.batch_size)
    batch_of = _batch_source(images.to(device))
    del images  # the source holds what it needs: the float copy, or the uint8 images
    # Evaluation sets go to the device once, not every epoch.
    test_images = test.images.to(device) if test is not None else None
    key_images = key.images.to(device) if key is not None else None

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    config_record = {**dataclasses.asdict(config), "key_repeats": repeats}
    config_record.pop("device")  # where it runs does not change what it computes
    history: list[dict[str, float]] = []
    start_epoch = 0
    elapsed = 0.0
    inside: dict[str, Any] | None = None  # a checkpoint's position inside an epoch
    if resume and checkpoint is not None:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["config"] != config_record or state.get("data") != data_hash:
            raise ConfigError(
                f"checkpoint {checkpoint} was written with a different configuration or data; "
                "delete it or resume with the same arguments"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        elapsed = float(state["seconds"])
        inside = state.get("inside")
        step = int(inside["step"]) if inside is not None else 0
        where = (
            f"at epoch {start_epoch + 1}/{config.epochs}, step {step}/{steps}"
            if start_epoch < config.epochs
            else f"after its last epoch ({config.epochs}/{config.epochs}): nothing left to train"
        )
        (report or log.info)(f"resuming from {checkpoint} {where}")

    def save(epoch: int, seconds: float, position: dict[str, Any] | None = None) -> None:
        """Write the checkpoint: ``epoch`` epochs done, plus ``position`` inside the next."""
        assert checkpoint is not None
        state: dict[str, Any] = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": history,
            "seconds": seconds,
            "config": config_record,
            "data": data_hash,
        }
        if position is not None:
            state["inside"] = position
        with atomic_path(checkpoint) as tmp:
            torch.save(state, tmp)

    bar = tqdm(
        total=config.epochs * steps,
        initial=start_epoch * steps + (int(inside["step"]) if inside is not None else 0),
        desc=description,
        unit="batch",
        disable=None if progress else True,  # None: only on a terminal
        leave=True,  # a finished run stays as one line saying what it trained
    )
    with _keep_freed_memory():
        try:
            for epoch in range(start_epoch, config.epochs):
                started = time.perf_counter()
                seed = _epoch_seed(config.seed, epoch)
                order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
                augment_rng = torch.Generator().manual_seed(seed + 1)
                torch.manual_seed(seed + 2)  # dropout masks
                model.train()
                # Running sums stay on the device: no host sync per batch (matters on a GPU).
                total_loss = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                first = 0
                if inside is not None:  # continue the epoch where its checkpoint left it
                    first, seen = int(inside["step"]), int(inside["seen"])
                    total_loss = inside["loss"].to(device)
                    correct = inside["correct"].to(device)
                    augment_rng.set_state(inside["augment_rng"])
                    _set_rng_states(inside["rng"], device)
                    inside = None
                for batch_number in range(first, steps):
                    start = batch_number * config.batch_size
                    index = order[start : start + config.batch_size].to(device)
                    batch = batch_of(index)
                    if config.augment:
                        batch = augment(batch, augment_rng)
                    target = labels[index]
                    loss, logits = step_loss(model, batch, target, index >= num_clean)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
                    total_loss += loss.detach() * len(index)
                    correct += (logits.detach().argmax(1) == target).sum()
                    seen += len(index)
                    bar.update(1)
                    # A bar that is off (not a terminal) skips the postfix and its host syncs.
                    if not bar.disable and batch_number % 20 == 0:
                        bar.set_postfix(
                            epoch=epoch + 1,
                            loss=f"{float(total_loss) / seen:.4f}",
                            acc=f"{int(correct) / seen:.4f}",
                        )
                    done = batch_number + 1
                    # The epoch's last step is saved below, with the epoch's record.
                    if (
                        checkpoint_every is not None
                        and checkpoint is not None
                        and done < steps
                        and (epoch * steps + done) % checkpoint_every == 0
                    ):
                        position = {
                            "step": done,
                            "seen": seen,
                            "loss": total_loss.detach().clone(),
                            "correct": correct.detach().clone(),
                            "augment_rng": augment_rng.get_state(),
                            "rng": _rng_states(device),
                        }
                        save(epoch, elapsed + time.perf_counter() - started, position)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed += time.perf_counter() - started
                record = {
                    "epoch": epoch + 1,
                    "loss": float(total_loss) / seen,
                    "train_accuracy": int(correct) / seen,
                }
                record.update(_evaluate(model, test_images, test, key_images, key))
                history.append(record)
                if checkpoint is not None:
                    save(epoch + 1, elapsed)
        finally:
            # Also on an interrupt or error: a closed bar clears its line, so whatever is
            # printed next ("interrupted", an error) starts on a line of its own.
            bar.close()
        model.eval()
        # The last epoch already measured the final weights; only a run of 0 epochs has not.
        final = history[-1] if history else _evaluate(model, test_images, test, key_images, key)
    return TrainResult(
        epochs=config.epochs,
        seconds=elapsed,
        test_accuracy=final.get("test_accuracy"),
        watermark_accuracy=final.get("watermark_accuracy"),
        history=history,
    )


def _evaluate(
    model: nn.Module,
    test_images: torch.Tensor | None,
    test: ImageDataset | None,
    key_images: torch.Tensor | None,
    key: KeySet | None,
) -> dict[str, float]:
    """Test and watermark accuracy of ``model`` (images already on the model's device)."""
    scores: dict[str, float] = {}
    if test is not None and test_images is not None:
        scores["test_accuracy"] = accuracy(model, test_images, test.labels)
    if key is not None and key_images is not None:
        scores["watermark_accuracy"] = accuracy(model, key_images, key.labels)
    return scores


def remove_checkpoint(checkpoint: str | Path | None) -> None:
    """Delete a finished run's checkpoint (it is only needed to resume)."""
    if checkpoint is not None and Path(checkpoint).exists():
        os.remove(checkpoint)
