"""Steganalysis: can someone who does not hold the key tell trigger images from clean ones?

DeepStego (seed 002, section 5.2, Table 3) measures the secrecy of its triggers with ATS
(Lerch-Hostalot and Megías, "Unsupervised steganalysis based on artificial training sets",
2016) on an SVM with a Gaussian kernel. This module gives the two detectors the benchmark
reports, both on the same features:

- :func:`spam_features`: second-order SPAM features (Pevný, Bas and Fridrich, "Steganalysis
  by subtractive pixel adjacency matrix", IEEE TIFS 2010), the classic spatial-domain
  features for additive embedding: the Markov transition probabilities of neighbouring pixel
  differences, clipped to ``[-T, T]`` (``T = 3``), along the 4 straight and the 4 diagonal
  directions, averaged within each group: ``2 * (2T + 1)^3 = 686`` features per image.
- :func:`supervised_detection`: an RBF SVM trained on labelled cover and trigger images
  (disjoint from the ones it is tested on): the strongest detector, one that knows which
  training images carry the mark.
- :func:`ats_detection`: ATS, unsupervised. The detector holds only the images to judge
  (the testing set T: half covers, half triggers, unlabelled) and an embedding function.
  Counting embeddings, T holds images embedded 0 and 1 times, ``embed(T)`` 1 and 2 times,
  ``embed(embed(T))`` 2 and 3 times: an SVM trained on T (label 0) vs. ``embed(embed(T))``
  (label 1) splits ``embed(T)`` into the once-embedded images (T's covers) and the twice-
  embedded ones (T's triggers), as the authors' code does. With the owner's own embedding
  function that is the paper's "weights known" case; with a look-alike the attacker built
  (the same architecture and losses, another seed), "weights unknown".

Accuracy is measured on balanced test sets, so 0.5 is chance.

Example::

    features = spam_features(images)                      # N x 686
    result = supervised_detection(train_covers, train_triggers, test_covers, test_triggers)
    print(result.accuracy)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ownmark.errors import ConfigError

#: SPAM's clipping threshold T for second-order features (Pevný et al.'s choice).
SPAM_THRESHOLD = 3
#: The directions (dy, dx) of the straight and the diagonal groups.
STRAIGHT = ((0, 1), (0, -1), (1, 0), (-1, 0))
DIAGONAL = ((1, 1), (-1, -1), (1, -1), (-1, 1))
#: The SVM's hyper-parameter grid, chosen by 3-fold cross-validation on the training set.
SVM_GRID = {"svc__C": [1.0, 10.0, 100.0], "svc__gamma": ["scale", 0.1, 0.01]}


def _window(size: int, step: int) -> tuple[int, int]:
    """Rows (or columns) ``p`` for which ``p + 3 * step`` stays inside ``0..size-1``."""
    return (0, size - 3 * step) if step >= 0 else (-3 * step, size)


def _transitions(planes: torch.Tensor, dy: int, dx: int, threshold: int) -> torch.Tensor:
    """Second-order transition probabilities ``P(D2 | D0, D1)`` along ``(dy, dx)`` for each
    plane (N×H×W int64) as N×S^3 float64, ``S = 2T + 1``."""
    n, height, width = planes.shape
    r0, r1 = _window(height, dy)
    c0, c1 = _window(width, dx)
    if r1 <= r0 or c1 <= c0:
        raise ConfigError(f"images of {height}x{width} are too small for SPAM features")
    steps = [planes[:, r0 + k * dy : r1 + k * dy, c0 + k * dx : c1 + k * dx] for k in range(4)]
    side = 2 * threshold + 1
    diffs = [(steps[k] - steps[k + 1]).clamp(-threshold, threshold) + threshold for k in range(3)]
    index = (diffs[0] * side * side + diffs[1] * side + diffs[2]).reshape(n, -1)
    counts = torch.zeros(n, side**3, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    triples = counts.view(n, side * side, side)
    pairs = triples.sum(2, keepdim=True)
    return (triples / pairs.clamp(min=1.0)).reshape(n, -1)


def spam_features(images: torch.Tensor, threshold: int = SPAM_THRESHOLD) -> np.ndarray:
    """Second-order SPAM features of uint8 images (N×C×H×W): N × 2(2T+1)^3, float64.

    Each channel is analysed as a grey image and the channels' features are averaged.
    """
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ConfigError("spam_features takes uint8 images shaped N x C x H x W")
    if threshold < 1:
        raise ConfigError(f"the SPAM threshold must be at least 1, got {threshold}")
    n, channels = images.shape[:2]
    planes = images.to(torch.int64).reshape(n * channels, *images.shape[2:])
    groups = []
    for directions in (STRAIGHT, DIAGONAL):
        mean = sum(_transitions(planes, dy, dx, threshold) for dy, dx in directions)
        groups.append(torch.as_tensor(mean) / len(directions))
    features = torch.cat(groups, 1).view(n, channels, -1).mean(1)
    return features.numpy()


@dataclass(frozen=True)
class DetectionResult:
    """How well a steganalyser told covers from triggers.

    Attributes:
        accuracy: share of the balanced test images it labelled correctly (0.5: chance).
        true_positive_rate: share of the trigger images it called triggers.
        false_positive_rate: share of the covers it called triggers.
        test_images: number of test images (covers + triggers).
        method: "supervised" or "ats".
        svm: the chosen SVM hyper-parameters.
    """

    accuracy: float
    true_positive_rate: float
    false_positive_rate: float
    test_images: int
    method: str
    svm: dict[str, float | str]


def _svm(features: np.ndarray, labels: np.ndarray, seed: int) -> GridSearchCV:
    search = GridSearchCV(
        make_pipeline(StandardScaler(), SVC(kernel="rbf", random_state=seed)),
        SVM_GRID,
        cv=3,
        n_jobs=1,
    )
    search.fit(features, labels)
    return search


def _score(
    search: GridSearchCV, covers: torch.Tensor, triggers: torch.Tensor, method: str
) -> DetectionResult:
    said_cover = search.predict(spam_features(covers))
    said_trigger = search.predict(spam_features(triggers))
    tpr = float(np.mean(said_trigger == 1))
    fpr = float(np.mean(said_cover == 1))
    correct = np.sum(said_trigger == 1) + np.sum(said_cover == 0)
    return DetectionResult(
        accuracy=float(correct / (len(covers) + len(triggers))),
        true_positive_rate=tpr,
        false_positive_rate=fpr,
        test_images=len(covers) + len(triggers),
        method=method,
        svm={k.removeprefix("svc__"): v for k, v in search.best_params_.items()},
    )


def _check_pair(covers: torch.Tensor, triggers: torch.Tensor, what: str) -> None:
    if len(covers) < 6 or len(triggers) < 6:
        raise ConfigError(f"{what} needs at least 6 covers and 6 trigger images")
    if covers.shape[1:] != triggers.shape[1:]:
        raise ConfigError(
            f"{what}: covers are {tuple(covers.shape[1:])} but triggers "
            f"{tuple(triggers.shape[1:])}; give images of one shape"
        )


def supervised_detection(
    train_covers: torch.Tensor,
    train_triggers: torch.Tensor,
    test_covers: torch.Tensor,
    test_triggers: torch.Tensor,
    seed: int = 0,
) -> DetectionResult:
    """Train the SPAM + RBF-SVM detector on labelled covers and triggers (uint8) and test it
    on others; the test sets should be the same size (accuracy is then balanced)."""
    _check_pair(train_covers, train_triggers, "the training set")
    _check_pair(test_covers, test_triggers, "the test set")
    features = np.concatenate([spam_features(train_covers), spam_features(train_triggers)])
    labels = np.concatenate([np.zeros(len(train_covers)), np.ones(len(train_triggers))])
    return _score(_svm(features, labels, seed), test_covers, test_triggers, "supervised")


def ats_detection(
    test_covers: torch.Tensor,
    test_triggers: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    seed: int = 0,
) -> DetectionResult:
    """ATS (Lerch-Hostalot and Megías 2016) on the unlabelled mix T of ``test_covers`` and
    ``test_triggers``: an SVM trained on T (label 0) vs. T embedded twice by ``embed`` (label
    1; uint8 images in and out) labels T embedded once, image by image."""
    _check_pair(test_covers, test_triggers, "the test set")
    mix = torch.cat([test_covers, test_triggers])
    once = embed(mix)
    twice = embed(once)
    features = np.concatenate([spam_features(mix), spam_features(twice)])
    labels = np.concatenate([np.zeros(len(mix)), np.ones(len(twice))])
    search = _svm(features, labels, seed)
    return _score(search, once[: len(test_covers)], once[len(test_covers) :], "ats")
