"""DeepStego: triggers made by a secret, learned steganographic encoder (seed 002).

**Experimental, not registered by default** (``import ownmark.schemes.stego`` registers it as
``stego``): on the built-in digits the host model memorises the key images instead of
learning the hidden signal (after 15 epochs it answers the key label on 85% of the key
images, 86% of their clean originals and 1.5% of fresh triggers), so a verdict would rest on
memorised images; issue 11 stays open until embedding works.

Zheng Li and Shanqing Guo, "DeepStego: Protecting Intellectual Property of Deep Neural
Networks by Steganography" (seed 002), sections 4.1-4.2 and 5.2. Key samples
are ordinary training images into which a *stego model* has hidden the owner's logo; they are
labelled with a class other than their true one (``Y_I != Y_I'``, section 4.1) and the host
model learns to tell them from the clean images. The stego images look like the covers
(Table 4), a steganalyser that lacks the stego model barely detects them (Table 3), and a
second stego model trained the same way with another seed makes other images that the host
model does not answer with the key labels (Table 5): the "legality" claim.

**The stego model** (section 4.1, :class:`StegoEncoder`): the cover ``I`` and the logo (resized
to C×H×W) each pass through transposed convolutions giving a C×H×W feature map; the maps are
concatenated (2C×H×W) and residual convolutions bring them down to C channels. Ours predicts
a *residual* added to the cover (see "Strength and secret signs" below) rather than the image
itself, then clipped to the pixel range.
The **discriminator** (section 4.2, :class:`StegoDiscriminator`) is "several linear layers"
that score an image real (cover) or fake (stego). Training, with Adam for both (section 4.2):

- encoder: ``gamma * (alpha * MSE + beta * (1 - SSIM)) + delta * adversarial`` (eqs. 3-5),
  MSE on the 0..1 scale, SSIM of Wang et al. (11×11 Gaussian window, as
  :func:`ownmark.similarity.ssim`, here differentiable), adversarial: the discriminator's
  cross-entropy for calling the stego image real (the non-saturating form of eq. 4's
  ``log(1 - p(I'))``);
- discriminator: cross-entropy of real covers vs stego images (eqs. 6-7).

The paper gives no values for alpha, beta, gamma, delta, the learning rate or the layer
sizes. Our defaults: ``alpha = beta = gamma = 1`` (both quality terms count; at our distortion
``1 - SSIM`` is about 0.01 and dominates, as intended: it pushes the residual onto the strokes
where the eye and SSIM do not see it), ``delta = 0.01`` (the discriminator's cross-entropy is
about 0.7, so it only breaks ties between equally invisible residuals), learning rate 1e-3
(Adam's usual), 16 channels and 2 residual blocks (10,339 weights for one channel; the
discriminator: two hidden layers of 64), batches of 32: small images, CPU.

**Strength and secret signs** (our additions, documented deviations). The paper's stego
model has no decoder: it is trained only for invisibility, and the identity map is the
optimum of eqs. 3-5, so the longer it trains the closer the stego image comes to the cover
(below half a grey level the uint8 key image *is* the cover). The paper avoids this by
training it together with the host model, which we do not. With the energy fixed instead, we
measured that two seeds' encoders converge to the *same* images (300 steps: identical
triggers; the optimum is a function of the cover, a slight dimming), which would void the
legality claim (Table 5). So:

- the residual's energy is fixed per image at ``target_psnr`` dB (default 42: about 2 grey
  levels RMS, "almost nothing visible" and still surviving rounding to uint8);
- its signs are a secret ±1 pattern of the key (``carrier``, one fair sign per pixel);
- the encoder chooses the relative amplitude per pixel within ``[FLOOR, 1]`` (1/10..1), so it
  cannot pile the energy onto a few pixels: the losses decide *where* the residual goes
  (onto the strokes, where SSIM and the eye hardly see it), not whether it exists.

MSE stays in the loss as the paper has it (nearly constant here). Measured on the digits
(the 1,000 test images as covers, keys of seeds 0 and 1, uint8 triggers): PSNR 41.7-41.8 dB
(min 41.2), mean SSIM 0.992-0.993 (min per image 0.971, 5th percentile 0.978-0.982) at 30,
60, 100 and 300 steps alike; the untrained encoder gives SSIM 0.96-0.97, so training does
its job within 30 steps and more steps buy nothing measurable. Another seed's stego images
differ from ours by more than ours from the covers (mean squared difference between them
1.1-1.6 times ours; PSNR between them 39.7-41.3 dB; residual correlation 0.2-0.4, from the
clipping at black that both share).

**Before, not with, the host model**: the paper trains stego model, discriminator and host
model in turns ("trained iteratively", section 4); we train the encoder at keygen, in
:meth:`StegoScheme.make_secrets`, for ``encoder_steps`` Adam steps on random batches of the
training images, seeded from the key's secret (deterministic on CPU), before the host model
sees the key. Its weights (``encoder.<parameter>``), the logo (``logo``) and the signs
(``carrier``) go into the key file's ``extra`` tensors under the commitment, never into the
model file; fresh triggers and re-made triggers come from the stored tensors alone.
``encoder_steps`` 60 (default; twice what the quality needs) takes about 5 s on one CPU
thread of a busy 2-core machine for MNIST-size images; the tests use 30 (about 3 s).
Training and trigger making run torch on one thread (:func:`single_thread`).

**Caveat (measured, not solved here): the host model memorises the covers rather than
learning the residual.** ``zhang_mnist`` trained on the 4,000 digits with a 100-image key
(``key_ratio`` 0.2, seed 0) answers the key label on 85% of the key images after 15 epochs,
but on 86% of their *clean originals* too, on 1.5% of fresh triggers, and on 86% of another
seed's stego images of the same covers; at ``target_psnr`` 30 and 24 dB (10 epochs) likewise
(key 71-72%, originals 68-71%, fresh 2%), and with one target class for every key image
(``target_class=0``, 30 dB: key 73%, originals 75%, fresh 8.5%). So on MNIST with a small CNN
and training *after* the encoder, verification with these keys rests on memorised key images,
not on the stego pattern, and the legality claim (Table 5) does not carry over to the host
model; the paper's setting (CIFAR-10, VGG/ResNet, stego model trained with the host) may
differ.

**Logo**: the paper hides the IEEE logo; ``logo`` takes the path of any image (converted to the
data's channels and size), and the default is ownmark's own mark, :func:`default_logo`:
"OM" in PIL's built-in font inside a frame.

Key labels: the base class' secret derangement of the classes (each stego image's key label
differs from its true class, as section 4.1 requires); ``source_class``/``target_class`` give
the paper's fixed mapping.

Example::

    key = create_scheme("stego", num_keys=100).generate(load_dataset("digits"), seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torch import nn

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes.base import SchemeConfig, WatermarkScheme, register_scheme
from ownmark.similarity import K1, K2, SIGMA, WINDOW, gaussian_window

#: Name prefix of the encoder's weights in the key's ``extra`` tensors.
ENCODER_PREFIX = "encoder."
#: Name of the logo (uint8 C×H×W) in the key's ``extra`` tensors.
LOGO = "logo"
#: Smallest relative amplitude of the residual (its largest is 1): the encoder chooses where
#: the residual goes within a 10:1 range, so it cannot pile the whole energy on a few pixels.
FLOOR = 0.1
#: Name of the secret signs of the residual (float32 ±1, C×H×W) in the key's ``extra``.
CARRIER = "carrier"


@dataclass(frozen=True)
class StegoConfig(SchemeConfig):
    """Parameters of :class:`StegoScheme` (shared ones: see :class:`SchemeConfig`).

    Attributes:
        logo: path of the image to hide (any format PIL reads; converted to the data's
            channels and resized to its height and width); "" (default): ownmark's mark,
            :func:`default_logo`. The paper's is the IEEE logo.
        encoder_steps: Adam steps of encoder and discriminator at keygen (default 60; the
            tests use 30).
        batch_size: cover images per step (default 32).
        learning_rate: Adam's step size for both networks (default 1e-3).
        width: channels of the encoder's hidden layers (default 16).
        blocks: residual blocks of the encoder (default 2).
        target_psnr: the energy of each stego residual in dB PSNR against the cover
            (default 42, about 2 grey levels RMS; 20..60): the watermark's strength (see the
            module docstring). Rounding to uint8 moves the key images' PSNR by a few tenths.
        alpha: weight of MSE in the image loss (default 1).
        beta: weight of 1 - SSIM in the image loss (default 1).
        gamma: weight of the image loss (default 1).
        delta: weight of the adversarial loss (default 0.01).
    """

    logo: str = ""
    encoder_steps: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    width: int = 16
    blocks: int = 2
    target_psnr: float = 42.0
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_steps < 1:
            raise ConfigError(f"encoder_steps must be at least 1, got {self.encoder_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"learning_rate must lie in (0, 1], got {self.learning_rate}")
        if not 1 <= self.width <= 256:
            raise ConfigError(f"width must lie in 1..256, got {self.width}")
        if not 0 <= self.blocks <= 16:
            raise ConfigError(f"blocks must lie in 0..16, got {self.blocks}")
        if not 20.0 <= self.target_psnr <= 60.0:
            raise ConfigError(
                f"target_psnr must lie in 20..60 dB, got {self.target_psnr}; higher is fainter"
            )
        for name in ("alpha", "beta", "gamma", "delta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
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
    encoder: StegoEncoder,
    covers: torch.Tensor,
    logo: torch.Tensor,
    carrier: torch.Tensor,
    target_psnr: float,
) -> torch.Tensor:
    """Stego images (0..1 scale) of ``covers`` (N×C×H×W, 0..1) with ``logo`` (1×C×H×W, 0..1).

    The encoder's output, squashed to ``[FLOOR, 1]``, is the residual's relative amplitude
    per pixel; its signs are the key's secret ``carrier`` (±1, C×H×W). The residual, clipped
    to the pixel range, is rescaled per image to the energy of ``target_psnr`` dB, then added
    to the cover and clipped again.
    """
    rms = 10.0 ** (-target_psnr / 20.0)  # on the 0..1 scale
    out: torch.Tensor = encoder(covers, logo)
    amplitude = FLOOR + (1.0 - FLOOR) * torch.sigmoid(out)
    raw = amplitude * carrier
    residual = (covers + raw).clamp(0.0, 1.0) - covers
    energy = residual.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
    stego: torch.Tensor = (covers + residual * energy.reciprocal() * rms).clamp(0.0, 1.0)
    return stego


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


def default_logo(channels: int, height: int, width: int) -> torch.Tensor:
    """ownmark's mark: "OM" in PIL's built-in bitmap font inside a frame, white on black,
    drawn at 64×64 and resized (uint8 C×H×W)."""
    side = 64
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((2, 2, side - 3, side - 3), outline=255, width=4)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), "OM", font=font)
    text = Image.new("L", (int(right - left), int(bottom - top)), 0)
    ImageDraw.Draw(text).text((-left, -top), "OM", fill=255, font=font)
    text = text.resize((side - 20, (side - 20) * text.height // max(text.width, 1)))
    canvas.paste(text, ((side - text.width) // 2, (side - text.height) // 2))
    return _to_tensor(canvas, channels, height, width)


def load_stego_logo(path: str, channels: int, height: int, width: int) -> torch.Tensor:
    """The image at ``path`` as a uint8 C×H×W logo (grey for 1 channel, RGB for 3)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"logo image not found: {file}; give the path of an image file")
    try:
        with Image.open(file) as image:
            image.load()
            picture = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"logo {file} is not a readable image ({exc})") from exc
    return _to_tensor(picture, channels, height, width)


def _to_tensor(picture: Image.Image, channels: int, height: int, width: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    resized = picture.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    out = torch.from_numpy(pixels.copy())
    out = out.unsqueeze(0) if out.dim() == 2 else out.permute(2, 0, 1)
    if out.shape[0] != channels:  # other channel counts: repeat the grey image
        out = out.float().mean(0, keepdim=True).round().to(torch.uint8).repeat(channels, 1, 1)
    return out.contiguous()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (restored after).

    The networks are tiny: more threads gain little and, on a busy machine, cost up to ten
    times the time (measured). One thread also fixes the order of the float sums, so the
    same key makes the same uint8 images on machines with other core counts.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def secret_carrier(image_shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """The key's secret residual signs: independent fair ±1 per pixel (float32 C×H×W)."""
    bits = torch.randint(0, 2, image_shape, generator=generator)
    return (bits * 2 - 1).to(torch.float32)


def train_encoder(
    config: StegoConfig,
    covers: torch.Tensor,
    logo: torch.Tensor,
    carrier: torch.Tensor,
    generator: torch.Generator,
) -> StegoEncoder:
    """Train a stego encoder against a discriminator on ``covers`` (uint8 N×C×H×W) hiding
    ``logo`` (uint8 C×H×W) with the signs ``carrier`` (±1 float C×H×W), seeded from
    ``generator``; returns the encoder in eval mode."""
    channels = covers.shape[1]
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = StegoEncoder(channels, config.width, config.blocks)
        critic = StegoDiscriminator((channels, covers.shape[2], covers.shape[3]))
    batches = torch.Generator().manual_seed(seed)
    logo01 = logo.float().unsqueeze(0) / 255.0
    enc_opt = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=config.learning_rate)
    real = torch.ones(min(config.batch_size, len(covers)))
    for _ in range(config.encoder_steps):
        rows = torch.randperm(len(covers), generator=batches)[: config.batch_size]
        batch = covers[rows].float() / 255.0
        # Discriminator: covers are real, stego images fake (eqs. 6-7).
        with torch.no_grad():
            stego = embed(encoder, batch, logo01, carrier, config.target_psnr)
        critic_loss = F.binary_cross_entropy_with_logits(
            critic(batch), real
        ) + F.binary_cross_entropy_with_logits(critic(stego), 1.0 - real)
        critic_opt.zero_grad()
        critic_loss.backward()  # type: ignore[no-untyped-call]
        critic_opt.step()
        # Encoder: gamma * (alpha * MSE + beta * (1 - SSIM)) + delta * adversarial (eqs. 3-5).
        stego = embed(encoder, batch, logo01, carrier, config.target_psnr)
        image_loss = config.alpha * F.mse_loss(stego, batch) + config.beta * (
            1.0 - differentiable_ssim(stego, batch).mean()
        )
        adversarial = F.binary_cross_entropy_with_logits(critic(stego), real)
        loss = config.gamma * image_loss + config.delta * adversarial
        enc_opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        enc_opt.step()
    return encoder.eval()


@register_scheme
class StegoScheme(WatermarkScheme[StegoConfig]):
    """DeepStego (Li and Guo, seed 002): images with the owner's logo hidden by a secret,
    learned stego encoder, relabelled to a secret other class."""

    name = "stego"
    summary = "images with a logo hidden by a secret learned stego encoder (DeepStego)"
    config_class = StegoConfig

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Train the encoder on the training images; return its weights
        (``encoder.<parameter>``), the logo (``logo``, uint8 C×H×W) and the residual's secret
        signs (``carrier``, ±1 float32 C×H×W)."""
        channels, height, width = data.image_shape
        if self.config.logo:
            logo = load_stego_logo(self.config.logo, channels, height, width)
        else:
            logo = default_logo(channels, height, width)
        carrier = secret_carrier(data.image_shape, generator)
        with single_thread():
            encoder = train_encoder(self.config, data.train.images, logo, carrier, generator)
        weights = {
            f"{ENCODER_PREFIX}{name}": t.detach().clone().contiguous()
            for name, t in encoder.state_dict().items()
        }
        return {LOGO: logo, CARRIER: carrier, **weights}

    def encoder(self, channels: int) -> StegoEncoder:
        """The key's encoder, rebuilt from ``self.secrets``."""
        state = {
            name[len(ENCODER_PREFIX) :]: t
            for name, t in self.secrets.items()
            if name.startswith(ENCODER_PREFIX)
        }
        if not state or LOGO not in self.secrets or CARRIER not in self.secrets:
            raise ConfigError("this key stores no stego encoder; generate the key first")
        model = StegoEncoder(channels, self.config.width, self.config.blocks)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"the key's stego encoder does not fit its parameters ({exc})"
            ) from exc
        return model.eval()

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        encoder = self.encoder(originals.shape[1])
        logo = self.secrets[LOGO]
        if logo.shape != originals.shape[1:]:
            raise ConfigError(
                f"the key's logo is {tuple(logo.shape)} but the images are "
                f"{tuple(originals.shape[1:])}; use the key with the data it was made for"
            )
        logo01 = logo.float().unsqueeze(0) / 255.0
        with torch.no_grad(), single_thread():
            stego = embed(
                encoder,
                originals.float() / 255.0,
                logo01,
                self.secrets[CARRIER],
                self.config.target_psnr,
            )
        return (stego * 255.0).round().clamp(0, 255).to(torch.uint8)
