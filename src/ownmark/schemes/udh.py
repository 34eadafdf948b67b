"""Watermarks that name their owner: universal deep hiding + metric learning (seed 004).

Ye, Zhang and Feng (2024), "Protecting IP of deep neural networks with watermarking using
universal deep hiding and metric learning" (seed 004). The seed holds the abstract and the
references only, so the design fills the gaps from the work it cites; every choice is listed
here.

**Hiding** (universal deep hiding, Zhang et al., NeurIPS 2020). A hiding network
(:class:`HidingNet`) turns the owner's *copyright image* (the payload: a logo, or text such as
"(c) ownmark" or "licensee 17" rendered by ownmark,
:func:`~ownmark.schemes.images.text_image`) into a residual that does not depend on the
cover: UDH's "universal" perturbation. A trigger image is clean image + residual, clipped to
the pixel range and rounded to uint8. The residual is bounded by ``tanh``: ``|r| <=
max_residual`` grey levels (default 10, of 255), so triggers look like the originals; keygen
refuses a residual that stays under half a grey level everywhere (it would round to no change:
triggers equal to their covers). A reveal network (:class:`RevealNet`) recovers the
copyright image from any trigger image, and a blank image from a clean one.

Both are trained together at keygen for ``hide_steps`` Adam steps on random batches of
training images: loss ``energy_weight * mean(r^2) / bound^2 + beta * (MSE(reveal(trigger),
payload) + MSE(reveal(clean), 0))``, the reveal terms on images passed through a random laundering
step (none, Gaussian noise up to 8 grey levels, Gaussian blur sigma 1, or JPEG quality
50-90 with straight-through gradients; :func:`launder`), so that an API that launders its
queries does not strip the trigger from what its model sees.

**Embedding with metric learning.** The host model is trained on the clean data, the key's
triggers (labelled with the key's secret target class) and, every batch, ``trigger_share``
of the clean images made into triggers on the fly, laundered by one random step together
with their clean covers (which keep their true labels: laundering alone must not look like
the trigger); plus a triplet loss (FaceNet,
Schroff et al. 2015) on the host's penultimate features (the input of its last linear
layer): anchor = a trigger, positive = another trigger, negative = the anchor's own clean
cover, on L2-normalised features, margin ``margin``, weight ``triplet_weight`` (0 turns it
off: the ablation). It pulls all triggers together and away from their covers, so the
decision "trigger -> target" rests on the residual, not on the cover.

Key labels: one secret target class for every trigger (``target_class``; drawn from the
secret when not given), the triggers made from images of the other classes.

**Verification has two legs.** (a) The black-box label test every scheme has (matches,
p-value), unchanged. (b) Identity (:meth:`UDHScheme.identity`): the key's reveal network
recovers the copyright image from the key's trigger images, and the normalised
cross-correlation (NCC) of each revealed image with the registered payload is compared with a
threshold calibrated at keygen on images revealed from clean covers (the largest NCC over
``calibration_images`` clean test images, plus 0.1). The leg passes when most triggers
(``identity_share``, default 90%) reveal above the threshold. The evidence file records both
legs and ``ownmark evidence check`` recomputes (b) from the key.

Secrets: the hiding and reveal weights (``hide.<name>``, ``reveal.<name>``), the payload
(``payload``, uint8 C×H×W) and the identity threshold (``identity_threshold``) are stored in
the key file's ``extra`` tensors under the commitment, never in the model file.

**Licensees** (beyond the paper): ``licensee`` (an integer) makes the payload "licensee
<id>"; an owner gives each customer's copy its own key, and :mod:`ownmark.trace` tells which
licensee's copy a suspect API serves.

Defaults (not in the seed): ``max_residual`` 10 grey levels, ``beta`` 10, ``hide_steps``
800, ``width`` 16, ``margin`` 0.2, ``triplet_weight`` 0.5, ``trigger_share`` 0.1, learning
rate 1e-3.

Example::

    key = create_scheme("udh", num_keys=100, licensee=17).generate(mnist, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.schemes.base import (
    SchemeConfig,
    WatermarkScheme,
    key_label_lookup,
    register_scheme,
    source_rows,
)
from ownmark.schemes.images import load_logo, text_image
from ownmark.threads import single_thread

HIDE_PREFIX = "hide."
REVEAL_PREFIX = "reveal."
PAYLOAD = "payload"
THRESHOLD = "identity_threshold"
#: Added to the largest clean-cover NCC to make the identity threshold.
THRESHOLD_MARGIN = 0.1


@dataclass(frozen=True)
class UDHConfig(SchemeConfig):
    """Parameters of :class:`UDHScheme` (shared ones: see :class:`SchemeConfig`;
    ``target_class`` is the one key label, drawn from the secret when None).

    Attributes:
        text: the copyright text to render as payload (default "(c) ownmark").
        logo: path of an image to hide instead of text ("" default: the text).
        licensee: a licensee number; the payload becomes "licensee <id>" (default None).
        max_residual: bound on the residual, grey levels (default 10; 1..64).
        beta: weight of the reveal error (default 10).
        energy_weight: weight of the residual's energy, ``mean(r^2) / bound^2`` (default
            0.01: the bound already keeps it small; a larger weight starves the reveal
            network before it has learnt anything and the residual collapses to zero).
        hide_steps: Adam steps of the hiding and reveal networks at keygen (default 800).
        batch_size: covers per hiding step (default 32).
        learning_rate: Adam's step size (default 1e-3).
        width: channels of the hiding and reveal networks (default 16).
        margin: the triplet loss' margin on L2-normalised features (default 0.2, FaceNet's).
        triplet_weight: weight of the triplet loss when embedding (default 0.5; 0 = off).
        trigger_share: share of each batch's clean images made into triggers on the fly
            when embedding (default 0.1: every trigger has the one target label, so more
            would tilt the model towards it).
        identity_share: share of the key's triggers that must reveal above the threshold
            for the identity leg to pass (default 0.9).
        calibration_images: clean test images the threshold is calibrated on (default 200).
    """

    text: str = "(c) ownmark"
    logo: str = ""
    licensee: int | None = None
    max_residual: float = 10.0
    beta: float = 10.0
    energy_weight: float = 0.01
    hide_steps: int = 800
    batch_size: int = 32
    learning_rate: float = 1e-3
    width: int = 16
    margin: float = 0.2
    triplet_weight: float = 0.5
    trigger_share: float = 0.1
    identity_share: float = 0.9
    calibration_images: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1.0 <= self.max_residual <= 64.0:
            raise ConfigError(
                f"max_residual must lie in 1..64 grey levels, got {self.max_residual}"
            )
        if self.licensee is not None and self.licensee < 0:
            raise ConfigError(f"licensee must be a number >= 0, got {self.licensee}")
        if not self.text and not self.logo:
            raise ConfigError("give a copyright text or a logo to hide")
        if self.hide_steps < 1 or self.batch_size < 1 or self.width < 1:
            raise ConfigError("hide_steps, batch_size and width must be at least 1")
        if self.calibration_images < 10:
            raise ConfigError(
                f"calibration_images must be at least 10, got {self.calibration_images}"
            )
        self.require_weights("beta", "energy_weight", "margin", "triplet_weight")
        self.require_fractions("learning_rate", "trigger_share", "identity_share")


def conv_stack(channels: int, width: int, hidden: int) -> nn.Sequential:
    """``hidden`` 3×3 convolutions with ReLU (C -> width -> ... -> width), then one back to C
    channels; the size is kept."""
    layers: list[nn.Module] = []
    for i in range(hidden):
        layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(width, channels, 3, padding=1))


class HidingNet(nn.Module):
    """Payload (1×C×H×W, 0..1) -> universal residual, ``tanh``-bounded by ``bound``."""

    def __init__(self, channels: int, width: int, bound: float) -> None:
        super().__init__()
        self.bound = bound
        self.net = conv_stack(channels, width, hidden=2)

    def forward(self, payload: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bound * torch.tanh(self.net(payload))
        return out


class RevealNet(nn.Module):
    """Image (N×C×H×W, 0..1) -> revealed copyright image (N×C×H×W, 0..1)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.net = conv_stack(channels, width, hidden=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(images)
        return out


def launder(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random laundering step per batch, as a suspect API might apply to its queries:
    none, Gaussian noise (std up to 8 grey levels), Gaussian blur (sigma 1) or JPEG (quality
    50-90). Gradients pass straight through the non-differentiable ones (0..1 images)."""
    from ownmark.attacks.preprocess import gaussian_blur, jpeg  # attacks import the schemes

    choice = int(torch.randint(4, (1,), generator=generator))
    if choice == 0:
        return images
    if choice == 1:
        std = float(torch.rand(1, generator=generator)) * 8.0 / 255.0
        noise = torch.randn(images.shape, generator=generator) * std
        return (images + noise.to(images.device)).clamp(0.0, 1.0)
    pixels = (images.detach() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
    if choice == 2:
        done = gaussian_blur(pixels, 1.0)
    else:
        done = jpeg(pixels, int(torch.randint(50, 91, (1,), generator=generator)))
    target = done.float().to(images.device) / 255.0
    return images + (target - images).detach()


def ncc(revealed: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    """Zero-mean normalised cross-correlation of each revealed image with the payload (N)."""
    a = revealed.flatten(1).float()
    b = payload.flatten().float().unsqueeze(0)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    out: torch.Tensor = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-8)
    return out


def _state(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}{n}": t.detach().clone().contiguous() for n, t in module.state_dict().items()}


@register_scheme
class UDHScheme(WatermarkScheme[UDHConfig]):
    """Universal deep hiding + metric learning (Ye, Zhang and Feng 2024, seed 004): a
    learned, cover-independent residual that carries the owner's copyright image."""

    name = "udh"
    summary = "a universal hidden residual that reveals the owner's copyright image (UDH)"
    config_class = UDHConfig

    def label_map(self, num_classes: int, generator: torch.Generator) -> dict[int, int]:
        """Every class but the target -> the target (secret when ``target_class`` is None)."""
        if num_classes < 2:
            raise ConfigError("a key needs a data set with at least 2 classes")
        target = self.config.target_class
        if target is None:
            target = int(torch.randint(num_classes, (1,), generator=generator))
        source = self.config.source_class
        classes = [source] if source is not None else range(num_classes)
        return {c: target for c in classes if c != target}

    def payload(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The copyright image (uint8 C×H×W) the configuration asks for."""
        cfg = self.config
        if cfg.logo:
            return load_logo(cfg.logo, channels, height, width)
        text = f"licensee {cfg.licensee}" if cfg.licensee is not None else cfg.text
        return text_image(text, channels, height, width)

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Train hiding and reveal networks; calibrate the identity threshold."""
        channels, height, width = data.image_shape
        payload = self.payload(channels, height, width)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with single_thread():
            hide, reveal = self._train(data.train.images, payload, seed)
            covers = data.test.images[: self.config.calibration_images]
            with torch.no_grad():
                clean = ncc(reveal(covers.float() / 255.0), payload.float() / 255.0)
                largest = float(hide(payload.float().unsqueeze(0) / 255.0).abs().max()) * 255.0
        if largest < 0.5:
            # Triggers are rounded to uint8: such a residual changes no pixel, and the "key"
            # would be clean images that no host can tell from their covers.
            raise ConfigError(
                f"the hiding network's residual is at most {largest:.2f} grey levels, which "
                f"rounds to no change at all (max_residual {self.config.max_residual:g}, "
                f"hide_steps {self.config.hide_steps}); use a larger max_residual (default 10) "
                "or more hide_steps"
            )
        threshold = torch.tensor(float(clean.max()) + THRESHOLD_MARGIN, dtype=torch.float32)
        return {
            PAYLOAD: payload,
            THRESHOLD: threshold,
            **_state(HIDE_PREFIX, hide),
            **_state(REVEAL_PREFIX, reveal),
        }

    def _train(
        self, covers: torch.Tensor, payload: torch.Tensor, seed: int
    ) -> tuple[HidingNet, RevealNet]:
        cfg = self.config
        channels = covers.shape[1]
        bound = cfg.max_residual / 255.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hide = HidingNet(channels, cfg.width, bound)
            reveal = RevealNet(channels, cfg.width)
        randomness = torch.Generator().manual_seed(seed)
        target = payload.float().unsqueeze(0) / 255.0
        optimizer = torch.optim.Adam(
            [*hide.parameters(), *reveal.parameters()], lr=cfg.learning_rate
        )
        for _ in range(cfg.hide_steps):
            rows = torch.randperm(len(covers), generator=randomness)[: cfg.batch_size]
            batch = covers[rows].float() / 255.0
            residual = hide(target)
            triggers = (batch + residual).clamp(0.0, 1.0)
            shown = launder(torch.cat([triggers, batch]), randomness)
            revealed = reveal(shown)
            wanted = torch.cat([target.expand(len(batch), -1, -1, -1), torch.zeros_like(batch)])
            energy = residual.pow(2).mean() / bound**2
            loss = cfg.energy_weight * energy + cfg.beta * F.mse_loss(revealed, wanted)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return hide.eval(), reveal.eval()

    def _networks(self, channels: int) -> tuple[HidingNet, RevealNet]:
        cfg = self.config
        hide = HidingNet(channels, cfg.width, cfg.max_residual / 255.0)
        reveal = RevealNet(channels, cfg.width)
        for prefix, module in ((HIDE_PREFIX, hide), (REVEAL_PREFIX, reveal)):
            state = {n[len(prefix) :]: t for n, t in self.secrets.items() if n.startswith(prefix)}
            if not state:
                raise ConfigError(
                    f"this key stores no {prefix[:-1]} network (its weights are missing); use "
                    "the key file keygen wrote, or generate a new key"
                )
            try:
                module.load_state_dict(state)
            except RuntimeError as exc:
                raise ConfigError(
                    f"the key's {prefix[:-1]} network does not fit its parameters ({exc})"
                ) from exc
        if PAYLOAD not in self.secrets or THRESHOLD not in self.secrets:
            raise ConfigError("this key stores no copyright image or threshold; regenerate it")
        return hide.eval(), reveal.eval()

    def residual(self, channels: int) -> torch.Tensor:
        """The key's universal residual on the 0..1 scale (1×C×H×W)."""
        hide, _ = self._networks(channels)
        payload = self.secrets[PAYLOAD].float().unsqueeze(0) / 255.0
        with torch.no_grad(), single_thread():
            out: torch.Tensor = hide(payload)
        return out

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        residual = self.residual(originals.shape[1])
        if residual.shape[1:] != originals.shape[1:]:
            raise ConfigError(
                f"the key's residual is {tuple(residual.shape[1:])} but the images are "
                f"{tuple(originals.shape[1:])}; use the key with the data it was made for"
            )
        triggers = (originals.float() / 255.0 + residual).clamp(0.0, 1.0)
        return (triggers * 255.0).round().to(torch.uint8)

    def reveal(self, images: torch.Tensor) -> torch.Tensor:
        """Copyright images revealed from uint8 ``images`` (0..1 float, N×C×H×W)."""
        _, reveal = self._networks(images.shape[1])
        with torch.no_grad(), single_thread():
            out: torch.Tensor = reveal(images.float() / 255.0)
        return out

    def identity(self, key: KeySet) -> dict[str, Any]:
        """Leg (b): reveal the copyright image from the key's triggers and compare it with the
        registered one (NCC) against the threshold calibrated on clean covers."""
        self.secrets = dict(key.extra)
        payload = self.secrets[PAYLOAD].float() / 255.0
        scores = ncc(self.reveal(key.images), payload)
        threshold = float(self.secrets[THRESHOLD])
        above = float((scores > threshold).float().mean())
        return {
            "measure": "ncc",
            "mean": round(float(scores.mean()), 6),
            "min": round(float(scores.min()), 6),
            "threshold": round(threshold, 6),
            "share_above": round(above, 6),
            "required_share": self.config.identity_share,
            "passed": above >= self.config.identity_share,
        }

    def objective(self, key: KeySet) -> TripletMixer:
        """Embedding: CE on clean images, key triggers and on-the-fly laundered triggers, plus
        the triplet loss on penultimate features (anchor trigger, positive another trigger,
        negative the anchor's clean cover)."""
        self.secrets = dict(key.extra)
        residual = self.residual(key.image_shape[0])
        return TripletMixer(self.config, residual, key_label_lookup(key), key.seed or 0)


class TripletMixer:
    """The embedding objective of :class:`UDHScheme` (see :meth:`UDHScheme.objective`)."""

    def __init__(
        self,
        config: UDHConfig,
        residual: torch.Tensor,
        lookup: torch.Tensor,
        seed: int,
    ) -> None:
        self.config = config
        self.residual = residual
        self.lookup = lookup
        self.randomness = torch.Generator().manual_seed(seed % 2**63)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ownmark.attacks.transfer import last_linear

        lookup = self.lookup.to(labels.device)
        rows = source_rows(labels, is_key, lookup, self.config.trigger_share)
        covers = images[rows]
        triggers = (covers + self.residual.to(images.device)).clamp(0.0, 1.0)
        with torch.no_grad():
            # The same laundering step for the triggers and for their clean covers, which
            # keep their true labels: otherwise the laundering itself (JPEG blocks, blur)
            # becomes the trigger and a laundering API's clean queries get the target label.
            both = launder(torch.cat([triggers, covers]), self.randomness)
            both = (both * 255.0).round() / 255.0
        count = len(rows)
        features: list[torch.Tensor] = []
        hook = last_linear(model).register_forward_pre_hook(
            lambda _module, inputs: features.append(inputs[0])
        )
        try:
            logits = model(torch.cat([images, both]))
        finally:
            hook.remove()
        targets = torch.cat([labels, lookup[labels[rows]], labels[rows]])
        loss = F.cross_entropy(logits, targets)
        if self.config.triplet_weight > 0 and count >= 2:
            # On the unit sphere, as FaceNet: the margin then means the same for any network.
            penultimate = F.normalize(features[0], dim=1)
            anchor = penultimate[len(images) : len(images) + count]
            negative = penultimate[len(images) + count :]
            positive = anchor.roll(1, dims=0)
            loss = loss + self.config.triplet_weight * F.triplet_margin_loss(
                anchor, positive, negative, margin=self.config.margin
            )
        return loss, logits[: len(images)]
