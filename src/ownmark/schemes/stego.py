"""DeepStego: triggers made by a secret, learned steganographic encoder (seed 002).

Zheng Li and Shanqing Guo, "DeepStego: Protecting Intellectual Property of Deep Neural
Networks by Steganography" (seed 002), sections 4.1-4.2 and 5.2. Key samples are ordinary
training images into which a *stego model* has hidden the owner's logo; they are labelled
with a class other than their true one (``Y_I != Y_I'``, section 4.1) and the host model
learns to tell them from the clean images, which stay in its training data with their true
labels (``x in {X_I, X_I'}``, eq. 9). The stego images look like the covers (Table 4), a
steganalyser that lacks the stego model barely detects them (Table 3), and stego models
trained the same way with other seeds make images the host model does not answer with the
key labels (Table 5): the "legality" claim.

**The stego model** (section 4.1, :class:`StegoEncoder`): the cover ``I`` and the logo (resized
to C×H×W) each pass through transposed convolutions giving a C×H×W feature map; the maps are
concatenated (2C×H×W) and residual convolutions bring them down to C channels. Ours predicts
a *residual* (``tanh``), scaled per image to a fixed energy (``target_psnr`` dB against the
cover) and added to the cover, clipped to the pixel range; the key images are rounded to
uint8. The **discriminator** (section 4.2, :class:`StegoDiscriminator`) is "several linear
layers" that score an image real (cover) or fake (stego). Losses, with Adam for both:

- encoder: ``gamma * (alpha * MSE + beta * (1 - SSIM)) + delta * adversarial`` (eqs. 3-5),
  MSE on the 0..1 scale, SSIM of Wang et al. (11×11 Gaussian window, as
  :func:`ownmark.similarity.ssim`, here differentiable), adversarial: the discriminator's
  cross-entropy for calling the stego image real (the non-saturating form of eq. 4);
- discriminator: cross-entropy of real covers vs. stego images (eqs. 6-7);
- and, while trained with a host model, the host's cross-entropy on the stego images with
  their key labels flows back into the encoder (section 4: "stego-model, dis-model and
  host-model are trained iteratively ... end to end").

**Trained with a host, at keygen** (our reading of section 4 and Table 5's "the fourth stego
model is trained synchronously with the host model"). An encoder trained for invisibility
alone makes residuals a host model cannot learn: measured on the built-in digits, a
``zhang_mnist`` host trained 8-10 epochs on such triggers (24-42 dB) answers the key label
on 1-13% of fresh triggers, no more than on clean covers, and memorises the key images
instead. An encoder trained *together* with a host shapes its residual into something a
network of that kind picks up, and a *fresh* host then learns it too (24 dB: 84% of fresh
triggers, 1.6% of clean covers). So :meth:`StegoScheme.make_secrets`:

1. warms the encoder up for invisibility against the discriminator (``encoder_steps``);
2. trains it for ``joint_epochs`` together with a *proxy host* (``proxy_arch``; default the
   data's network, as ``ownmark train`` picks it) on ``joint_images`` training images:
   every batch, ``stego_share`` of its images are made into stego images on the fly and
   labelled with their key labels, next to the clean images with their true labels. The
   residual's energy starts at ``start_psnr`` and rises linearly to ``target_psnr`` over
   the first 60% of the steps (a curriculum: a faint residual is only learnt once a
   stronger one has been);
3. freezes it: the key's images, fresh triggers and re-made triggers all come from the
   stored weights. The proxy host is thrown away.

Embedding (:meth:`StegoScheme.objective`) then trains the real host model the same way with
the frozen encoder: the key images (repeated to ``key_ratio``) plus ``stego_share`` of each
batch's clean images made into stego images on the fly, so the host learns the hidden signal
rather than memorising the key images. Keygen, calibration and embedding keep their order;
the key never changes after keygen.

Secrets: the encoder's weights (``encoder.<parameter>``) and the logo (``logo``) go into the
key file's ``extra`` tensors under the commitment, never into the model file. Nothing else
makes the triggers, so the legality claim rests on the weights: another encoder trained the
same way, even on the same covers and logo, makes other residuals (measured in
``benchmarks/results/stego_mnist.md``).

**Strength.** The paper does not give its residual's energy; the issue asks for at least
40 dB PSNR. On the built-in digits with the paper-size CNN (10 joint epochs, then a fresh
host trained 10 epochs with the frozen encoder) the fresh host answers the key label on
fresh triggers / clean covers: 20 dB 84% / 1.0%, 24 dB 84% / 1.6%, 30 dB 23% / 1.0%, 36 dB
2% / 2%; at 40-42 dB nothing is learnt (1-3%), with or without the curriculum. The default
``target_psnr`` 24 dB is the faintest residual that was learnt reliably; on full MNIST it
gives SSIM 0.96 and 97% trigger accuracy on fresh triggers
(``benchmarks/results/stego_mnist.md``). The 40 dB target is not met on MNIST.

The paper gives no values for alpha, beta, gamma, delta, the learning rate or the layer
sizes. Our defaults: ``alpha = beta = gamma = 1`` (with the energy fixed, they decide *where*
the residual goes: onto the strokes, where SSIM and the eye hardly see it), ``delta = 0.01``
(the discriminator's cross-entropy is about 0.7, so it only breaks ties), learning rate 1e-3
(Adam's usual), 16 channels and 2 residual blocks (10,339 weights for one channel; the
discriminator: two hidden layers of 64), batches of 32 for the warm-up, 128 (the training
default) with the host.

**Logo**: the paper hides the IEEE logo; ``logo`` takes the path of any image (converted to
the data's channels and size), and the default is ownmark's own mark, :func:`default_logo`:
"OM" in PIL's built-in font inside a frame.

Key labels: the base class' secret derangement of the classes (each stego image's key label
differs from its true class, as section 4.1 requires); ``source_class``/``target_class`` give
the paper's fixed mapping.

Example::

    key = create_scheme("stego", num_keys=100).generate(load_dataset("digits"), seed=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    label_lookup,
    register_scheme,
    source_rows,
)
from ownmark.schemes.images import default_logo, load_logo
from ownmark.similarity import K1, K2, SIGMA, WINDOW, gaussian_window
from ownmark.threads import single_thread

#: Name prefix of the encoder's weights in the key's ``extra`` tensors.
ENCODER_PREFIX = "encoder."
#: Name of the logo (uint8 C×H×W) in the key's ``extra`` tensors.
LOGO = "logo"
#: Share of the joint training over which the residual fades from ``start_psnr`` to
#: ``target_psnr`` (the rest trains at the target).
CURRICULUM = 0.6


@dataclass(frozen=True)
class StegoConfig(SchemeConfig):
    """Parameters of :class:`StegoScheme` (shared ones: see :class:`SchemeConfig`).

    Attributes:
        logo: path of the image to hide (any format PIL reads; converted to the data's
            channels and resized to its height and width); "" (default): ownmark's mark,
            :func:`default_logo`. The paper's is the IEEE logo.
        encoder_steps: Adam steps of the invisibility warm-up against the discriminator
            (default 60).
        joint_epochs: epochs the encoder trains together with a proxy host at keygen
            (default 10; 0 skips it, and a host then learns next to nothing).
        joint_images: training images (a seeded subset) for the joint training; None
            (default 10,000): all of them when there are fewer.
        proxy_arch: the proxy host's network; "" (default): the data's network
            (``zhang_mnist`` for one channel, ``zhang_cifar10`` for three).
        stego_share: share of each training batch's clean images made into stego images
            on the fly, at keygen and when embedding (default 0.25).
        batch_size: cover images per warm-up step (default 32).
        learning_rate: Adam's step size for encoder and discriminator (default 1e-3).
        width: channels of the encoder's hidden layers (default 16).
        blocks: residual blocks of the encoder (default 2).
        target_psnr: the energy of each stego residual in dB PSNR against the cover
            (default 24; 12..60, higher is fainter): the watermark's strength (see the
            module docstring). Rounding to uint8 moves the key images' PSNR by a few tenths.
        start_psnr: the residual's energy at the start of the joint training (default 16;
            at most ``target_psnr``).
        alpha: weight of MSE in the image loss (default 1).
        beta: weight of 1 - SSIM in the image loss (default 1).
        gamma: weight of the image loss (default 1).
        delta: weight of the adversarial loss (default 0.01).
    """

    logo: str = ""
    encoder_steps: int = 60
    joint_epochs: int = 10
    joint_images: int | None = 10_000
    proxy_arch: str = ""
    stego_share: float = 0.25
    batch_size: int = 32
    learning_rate: float = 1e-3
    width: int = 16
    blocks: int = 2
    target_psnr: float = 24.0
    start_psnr: float = 16.0
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_steps < 0:
            raise ConfigError(f"encoder_steps must be at least 0, got {self.encoder_steps}")
        if self.joint_epochs < 0:
            raise ConfigError(f"joint_epochs must be at least 0, got {self.joint_epochs}")
        if self.joint_images is not None and self.joint_images < 10:
            raise ConfigError(f"joint_images must be at least 10, got {self.joint_images}")
        self.require_fractions("stego_share", "learning_rate")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 1 <= self.width <= 256:
            raise ConfigError(f"width must lie in 1..256, got {self.width}")
        if not 0 <= self.blocks <= 16:
            raise ConfigError(f"blocks must lie in 0..16, got {self.blocks}")
        if not 12.0 <= self.target_psnr <= 60.0:
            raise ConfigError(
                f"target_psnr must lie in 12..60 dB, got {self.target_psnr}; higher is fainter"
            )
        if not 12.0 <= self.start_psnr <= self.target_psnr:
            raise ConfigError(
                f"start_psnr must lie in 12..target_psnr ({self.target_psnr}) dB, got "
                f"{self.start_psnr}"
            )
        self.require_weights("alpha", "beta", "gamma", "delta")
        if self.gamma == 0.0 or self.alpha + self.beta == 0.0:
            raise ConfigError("the image loss must count: give gamma > 0 and alpha or beta > 0")


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))``, 3×3 convolutions keeping the size."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def _branch(channels: int, width: int) -> nn.Sequential:
    """Two transposed 3×3 convolutions, C -> width -> C channels, same size (section 4.1)."""
    return nn.Sequential(
        nn.ConvTranspose2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(width, channels, 3, padding=1),
    )


class StegoEncoder(nn.Module):
    """The stego model of section 4.1: cover and logo through transposed-convolution branches
    (C×H×W each), concatenated (2C), residual convolutions down to C channels."""

    def __init__(self, channels: int, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.cover_branch = _branch(channels, width)
        self.logo_branch = _branch(channels, width)
        self.head = nn.Conv2d(2 * channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, cover: torch.Tensor, logo: torch.Tensor) -> torch.Tensor:
        """Raw amplitude logits (N×C×H×W) for covers and a logo on the 0..1 scale (logo
        1×C×H×W); :func:`embed` turns them into the residual."""
        features = torch.cat(
            [self.cover_branch(cover), self.logo_branch(logo).expand(len(cover), -1, -1, -1)], 1
        )
        out: torch.Tensor = self.tail(self.blocks(F.relu(self.head(features))))
        return out


class StegoDiscriminator(nn.Module):
    """The discriminator of section 4.2: linear layers on the flattened image, one logit
    (positive: a real cover)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 64) -> None:
        super().__init__()
        size = math.prod(image_shape)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(size, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(images).squeeze(1)
        return out


def embed(
    encoder: StegoEncoder, covers: torch.Tensor, logo: torch.Tensor, target_psnr: float
) -> torch.Tensor:
    """Stego images (0..1 scale) of ``covers`` (N×C×H×W, 0..1) with ``logo`` (1×C×H×W, 0..1).

    The encoder's output through ``tanh`` is the residual's shape; the residual, clipped to
    the pixel range, is rescaled per image to the energy of ``target_psnr`` dB, then added to
    the cover and clipped again.
    """
    rms = 10.0 ** (-target_psnr / 20.0)  # on the 0..1 scale
    shape = torch.tanh(encoder(covers, logo))
    residual = (covers + shape).clamp(0.0, 1.0) - covers
    energy = residual.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
    stego: torch.Tensor = (covers + residual * energy.reciprocal() * rms).clamp(0.0, 1.0)
    return stego


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Round 0..1 images to the uint8 grid, still on the 0..1 scale; gradients pass as if
    the rounding were not there (straight-through), so the encoder learns what survives it."""
    rounded = (images * 255.0).round() / 255.0
    return images + (rounded - images).detach()


def ssim_loss_window(image_hw: tuple[int, int]) -> int:
    """Wang et al.'s 11-pixel window, or the largest odd one that fits smaller images."""
    side = min(WINDOW, *image_hw)
    return side if side % 2 else side - 1


def differentiable_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each pair of 0..1 images (as :func:`ownmark.similarity.ssim`, with
    gradients, float32)."""
    channels = a.shape[1]
    window = ssim_loss_window((a.shape[2], a.shape[3]))
    # The Gaussian window is separable: two 1-D passes (its row sums are the 1-D kernel).
    line = gaussian_window(window, SIGMA).sum(dim=1).to(a.dtype)
    rows = line.view(1, 1, 1, window).expand(channels, 1, 1, window)
    cols = line.view(1, 1, window, 1).expand(channels, 1, window, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3))


def image_loss(config: StegoConfig, stego: torch.Tensor, covers: torch.Tensor) -> torch.Tensor:
    """``gamma * (alpha * MSE + beta * (1 - SSIM))`` (eq. 3, weighted), averaged."""
    quality = config.alpha * F.mse_loss(stego, covers) + config.beta * (
        1.0 - differentiable_ssim(stego, covers).mean()
    )
    return config.gamma * quality


def warm_up_encoder(
    config: StegoConfig,
    encoder: StegoEncoder,
    critic: StegoDiscriminator,
    covers: torch.Tensor,
    logo: torch.Tensor,
    seed: int,
) -> None:
    """Train ``encoder`` for invisibility against ``critic`` (eqs. 3-7) on random batches of
    ``covers`` (uint8 N×C×H×W) hiding ``logo`` (0..1, 1×C×H×W), ``encoder_steps`` steps."""
    batches = torch.Generator().manual_seed(seed)
    enc_opt = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=config.learning_rate)
    real = torch.ones(min(config.batch_size, len(covers)))
    for _ in range(config.encoder_steps):
        rows = torch.randperm(len(covers), generator=batches)[: config.batch_size]
        batch = covers[rows].float() / 255.0
        # Discriminator: covers are real, stego images fake (eqs. 6-7).
        with torch.no_grad():
            stego = embed(encoder, batch, logo, config.start_psnr)
        critic_loss = F.binary_cross_entropy_with_logits(
            critic(batch), real
        ) + F.binary_cross_entropy_with_logits(critic(stego), 1.0 - real)
        critic_opt.zero_grad()
        critic_loss.backward()  # type: ignore[no-untyped-call]
        critic_opt.step()
        # Encoder: gamma * (alpha * MSE + beta * (1 - SSIM)) + delta * adversarial (eqs. 3-5).
        stego = embed(encoder, batch, logo, config.start_psnr)
        adversarial = F.binary_cross_entropy_with_logits(critic(stego), real)
        loss = image_loss(config, stego, batch) + config.delta * adversarial
        enc_opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        enc_opt.step()


class StegoMixer:
    """A training objective (:class:`ownmark.train.Objective`) that turns ``share`` of each
    batch's clean images of the key's source classes into stego images, labelled with their
    key labels, and trains on them next to the whole batch.

    Frozen (``critic`` None): the encoder only makes images (embedding). Learning (a
    ``critic`` given): every call first applies the encoder's and the discriminator's
    gradients of the previous step (the host's optimizer does not hold them), the residual's
    energy follows the curriculum over ``total_steps``, and the loss adds the encoder's
    image and adversarial terms, so the host's cross-entropy and the invisibility losses
    train the encoder together (section 4).
    """

    def __init__(
        self,
        config: StegoConfig,
        encoder: StegoEncoder,
        logo: torch.Tensor,
        lookup: torch.Tensor,
        *,
        critic: StegoDiscriminator | None = None,
        total_steps: int = 0,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.logo = logo
        self.lookup = lookup
        self.critic = critic
        self.total_steps = total_steps
        self.steps = 0
        self.encoder_opt = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
        self.critic_opt = (
            torch.optim.Adam(critic.parameters(), lr=config.learning_rate) if critic else None
        )

    def psnr(self) -> float:
        """The residual's energy now: the target once frozen or past the curriculum."""
        cfg = self.config
        if self.critic is None or self.total_steps == 0:
            return cfg.target_psnr
        progress = min(1.0, self.steps / (CURRICULUM * self.total_steps))
        return cfg.start_psnr + (cfg.target_psnr - cfg.start_psnr) * progress

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        learning = self.critic is not None
        if learning:
            self.apply_gradients()
        lookup = self.lookup.to(labels.device)
        rows = source_rows(labels, is_key, lookup, self.config.stego_share)
        covers = images[rows]
        logo = self.logo.to(images.device)
        extra = torch.zeros((), device=images.device)
        if learning:
            stego = to_pixels(embed(self.encoder, covers, logo, self.psnr()))
            extra = self._encoder_terms(stego, covers)
        else:
            with torch.no_grad():
                stego = to_pixels(embed(self.encoder, covers, logo, self.config.target_psnr))
        logits = model(torch.cat([images, stego]))
        targets = torch.cat([labels, lookup[labels[rows]]])
        self.steps += 1
        return F.cross_entropy(logits, targets) + extra, logits[: len(images)]

    def _encoder_terms(self, stego: torch.Tensor, covers: torch.Tensor) -> torch.Tensor:
        """Train the discriminator one step; return the encoder's image + adversarial loss."""
        assert self.critic is not None and self.critic_opt is not None
        if len(covers) == 0:
            return torch.zeros((), device=covers.device)
        real = torch.ones(len(covers), device=covers.device)
        critic_loss = F.binary_cross_entropy_with_logits(
            self.critic(covers), real
        ) + F.binary_cross_entropy_with_logits(self.critic(stego.detach()), 1.0 - real)
        self.critic_opt.zero_grad()
        critic_loss.backward()  # type: ignore[no-untyped-call]
        self.critic_opt.step()
        self.critic_opt.zero_grad()  # the adversarial term below must not train the critic
        adversarial = F.binary_cross_entropy_with_logits(self.critic(stego), real)
        return image_loss(self.config, stego, covers) + self.config.delta * adversarial

    def apply_gradients(self) -> None:
        """One Adam step of the encoder on the gradients the last loss left."""
        if any(p.grad is not None for p in self.encoder.parameters()):
            self.encoder_opt.step()
        self.encoder_opt.zero_grad()


@register_scheme
class StegoScheme(WatermarkScheme[StegoConfig]):
    """DeepStego (Li and Guo, seed 002): images with the owner's logo hidden by a secret,
    learned stego encoder (trained with a proxy host at keygen), relabelled to a secret
    other class."""

    name = "stego"
    summary = "images with a logo hidden by a secret learned stego encoder (DeepStego)"
    config_class = StegoConfig

    def pick_sources(
        self, data: DataSplits, label_map: dict[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the base class; keeps the label map for the joint training."""
        self.joint_label_map = dict(label_map)
        return super().pick_sources(data, label_map, generator)

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Warm the encoder up, train it with a proxy host, freeze it; return its weights
        (``encoder.<parameter>``) and the logo (``logo``, uint8 C×H×W)."""
        channels, height, width = data.image_shape
        if self.config.logo:
            logo = load_logo(self.config.logo, channels, height, width)
        else:
            logo = default_logo(channels, height, width)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        encoder = self.train_encoder(data, logo, seed)
        weights = {
            f"{ENCODER_PREFIX}{name}": t.detach().clone().contiguous()
            for name, t in encoder.state_dict().items()
        }
        return {LOGO: logo, **weights}

    def train_encoder(self, data: DataSplits, logo: torch.Tensor, seed: int) -> StegoEncoder:
        """The warm-up and the joint training of the module docstring, seeded by ``seed``."""
        from ownmark.models import ModelSpec, build_model  # the models do not need schemes
        from ownmark.train import TrainConfig, fit
        from ownmark.workflows import default_arch  # the workflows import the schemes

        cfg = self.config
        channels = data.image_shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = StegoEncoder(channels, cfg.width, cfg.blocks)
            critic = StegoDiscriminator(data.image_shape)
        logo01 = logo.float().unsqueeze(0) / 255.0
        with single_thread():
            warm_up_encoder(cfg, encoder, critic, data.train.images, logo01, seed)
        if cfg.joint_epochs == 0:
            return encoder.eval()
        train = data.train
        if cfg.joint_images is not None and cfg.joint_images < len(train):
            rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            train = train.subset(rows[: cfg.joint_images])
        arch = cfg.proxy_arch or default_arch(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            spec = ModelSpec.with_defaults(
                arch, data.num_classes, channels, (data.image_shape[1], data.image_shape[2])
            )
            proxy = build_model(spec)
        config = TrainConfig(epochs=cfg.joint_epochs, key_ratio=0.0, seed=seed % 2**31)
        lookup = label_lookup(self.joint_label_map, data.num_classes)
        mixer = StegoMixer(
            cfg,
            encoder,
            logo01,
            lookup,
            critic=critic,
            total_steps=cfg.joint_epochs * math.ceil(len(train) / config.batch_size),
        )
        fit(proxy, train, config, objective=mixer, description="stego keygen: encoder + proxy")
        mixer.apply_gradients()
        return encoder.eval()

    def encoder(self, channels: int) -> StegoEncoder:
        """The key's encoder, rebuilt from ``self.secrets``."""
        state = {
            name[len(ENCODER_PREFIX) :]: t
            for name, t in self.secrets.items()
            if name.startswith(ENCODER_PREFIX)
        }
        if not state or LOGO not in self.secrets:
            raise ConfigError(
                "this key stores no stego encoder (its weights are missing); use the key file "
                "keygen wrote, or generate a new key"
            )
        model = StegoEncoder(channels, self.config.width, self.config.blocks)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"the key's stego encoder does not fit its parameters ({exc})"
            ) from exc
        return model.eval()

    def logo01(self, image_shape: tuple[int, ...]) -> torch.Tensor:
        """The key's logo on the 0..1 scale (1×C×H×W), checked against the images' shape."""
        logo = self.secrets[LOGO]
        if tuple(logo.shape) != tuple(image_shape):
            raise ConfigError(
                f"the key's logo is {tuple(logo.shape)} but the images are "
                f"{tuple(image_shape)}; use the key with the data it was made for"
            )
        return logo.float().unsqueeze(0) / 255.0

    def objective(self, key: KeySet) -> StegoMixer:
        """Embedding: the key images plus on-the-fly stego images of ``stego_share`` of each
        batch's clean images, made by the key's frozen encoder."""
        self.secrets = dict(key.extra)
        encoder = self.encoder(key.image_shape[0])
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        return StegoMixer(self.config, encoder, self.logo01(key.image_shape), key_label_lookup(key))

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        encoder = self.encoder(originals.shape[1])
        logo01 = self.logo01(originals.shape[1:])
        with torch.no_grad(), single_thread():
            stego = embed(encoder, originals.float() / 255.0, logo01, self.config.target_psnr)
        return (stego * 255.0).round().clamp(0, 255).to(torch.uint8)
