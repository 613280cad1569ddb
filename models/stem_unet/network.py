"""stem-unet's network and loss: the U-Net (scale-free intensity normalisation inside the graph, softmax
over SEG_CLASSES), the class-weighted cross-entropy against soft, centre-peaked targets, and the export
wrapper that adds the frame's novelty score (``models/novelty.py``) from the U-Net's deepest features."""

from __future__ import annotations

import torch
from torch import nn

from scanlens.sim.stem import SEG_CLASSES

from .config import BASE_CHANNELS, IGNORE, LEVELS, NOVELTY_BORDER_CELLS, SEG_OF_ATOM, TARGET_SIGMA_PX


def soft_targets(labels: torch.Tensor, distance: torch.Tensor, sigma_px: float = TARGET_SIGMA_PX) -> torch.Tensor:
    """Per-pixel target distributions ``[b, C, h, w]``: an atom column's class gets ``exp(-d^2 / 2 s^2)``
    (``s`` = ``sigma_px``, default :data:`TARGET_SIGMA_PX`; ``d`` the distance from its centre) and
    background the rest, so the network's atom probability peaks at the column centre (one peak per
    column for the service's peak finder); vacancies and background are one-hot. ``labels`` must not
    hold :data:`IGNORE`."""
    q = nn.functional.one_hot(labels, len(SEG_CLASSES)).permute(0, 3, 1, 2).to(torch.float32)
    atom = torch.isin(labels, torch.as_tensor(SEG_OF_ATOM))
    g = torch.where(atom, torch.exp(-(distance.clamp(max=1e3) ** 2) / (2.0 * sigma_px**2)), 1.0)
    q = q * g[:, None]
    q[:, 0] += torch.where(atom, 1.0 - g, 0.0)
    return q


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, distance: torch.Tensor, weights: torch.Tensor,
            sigma_px: float = TARGET_SIGMA_PX) -> torch.Tensor:
    """Class-weighted cross-entropy against :func:`soft_targets` of width ``sigma_px`` (weight of each
    pixel's label class; :data:`IGNORE` pixels weigh nothing)."""
    keep = labels != IGNORE
    labels = torch.where(keep, labels, 0)
    q = soft_targets(labels, distance, sigma_px)
    w = weights[labels] * keep
    per_pixel = -(q * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return (per_pixel * w).sum() / w.sum()


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


#: What the frame novelty head measures (``frame_features``).
NOVELTY_FEATURES = ("log(0.01 + mean) and log(0.01 + standard deviation) over the frame of each channel of "
                    f"the U-Net's deepest encoder block, cells within {NOVELTY_BORDER_CELLS} of the frame's edge "
                    "weighted 1/1000 (they see the zero padding)")


def interior_weights(n: int, like: torch.Tensor) -> torch.Tensor:
    """``[n]`` weights of a feature map's cells along one axis: 1 inside, 1e-3 within
    :data:`NOVELTY_BORDER_CELLS` of either edge, whose values the convolutions' zero padding shapes; their
    share shrinks as a frame grows, so with equal weights the frame statistics (and the novelty score)
    would depend on the frame's size. A map too small for an interior is weighted evenly. Written with
    ``arange`` on the map's own size so the exported graph keeps height and width dynamic."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)
    edge = torch.minimum(i, (n - 1) - i)
    return torch.where(edge >= NOVELTY_BORDER_CELLS, 1.0, 1e-3).to(like.dtype)


class STEMUNet(nn.Module):
    """Scale-free intensity normalisation, a U-Net, softmax over :data:`SEG_CLASSES` per pixel (logits
    divided by ``temperature``, fitted after training)."""

    def __init__(self, base: int = BASE_CHANNELS, levels: int = LEVELS, n_classes: int = len(SEG_CLASSES)):
        super().__init__()
        ch = [base * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.enc = nn.ModuleList([_block(1, ch[0])] + [_block(ch[i], ch[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(levels)])
        self.dec = nn.ModuleList([_block(2 * ch[i], ch[i]) for i in range(levels)])
        self.head = nn.Conv2d(ch[0], n_classes, 1)
        self.pool = nn.MaxPool2d(2)
        self.register_buffer("temperature", torch.ones(()))

    @staticmethod
    def normalize(image: torch.Tensor) -> torch.Tensor:
        """Scale-free: the square root of the image in units of its own mean (so detector counts and
        fractions of the beam give the same input; the root tames the Z contrast as the Anscombe
        transform did), then per-image standardisation. In float64: ONNX Runtime's float32 ReduceMean
        over a 512 x 512 frame is off by ~1e-4, which the network would amplify past the parity limit,
        and frames in fractions of the beam are ~1e-4 counts."""
        s = torch.clamp(image, min=0.0).to(torch.float64)
        z = torch.sqrt(s / s.mean(dim=(2, 3), keepdim=True).clamp_min(1e-30))
        mean = z.mean(dim=(2, 3), keepdim=True)
        var = ((z - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return ((z - mean) / torch.sqrt(var + 1e-6)).to(torch.float32)

    def logits_and_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits (divided by the temperature) and the frame's novelty features ``[n, 2 C]``."""
        x = self.normalize(image)
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        deep = x.to(torch.float64)
        w = interior_weights(deep.shape[2], deep)[:, None] * interior_weights(deep.shape[3], deep)[None, :]
        w = w / w.sum()
        mean = (deep * w).sum(dim=(2, 3))
        std = torch.sqrt((((deep - mean[:, :, None, None]) ** 2) * w).sum(dim=(2, 3)))
        features = torch.log(torch.cat([mean, std], dim=1) + 0.01).to(torch.float32)
        for i in reversed(range(self.levels)):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x) / self.temperature, features

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(image)[0]

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the class axis, written out: ONNX Runtime's Softmax on axis 1 of NCHW
        transposes the tensor twice and costs ~10 % of a frame."""
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.logits(image))


class WithFrameNovelty(nn.Module):
    """The exported graph: per-pixel probabilities ``[n, C, h, w]`` and each frame's novelty ``[n]``, from
    one pass of the network (the novelty head reads its deepest features)."""

    def __init__(self, net: STEMUNet, head: nn.Module):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.net.logits_and_features(image)
        return self.net.probabilities(logits), self.head(features)


def architecture() -> str:
    """The card's ``architecture``: the network described in words."""
    ch = "-".join(str(BASE_CHANNELS * 2**i) for i in range(LEVELS + 1))
    return (f"U-Net, {LEVELS} levels ({ch} channels; 2 x (3x3 conv, batch norm, ReLU) per block, 2x2 max-pool, "
            f"2x2 transposed-conv up-sampling, skip connections), 1x1 head, softmax over {len(SEG_CLASSES)} "
            "classes; scale-free intensity normalisation (sqrt of the image over its mean, standardised) in the graph; "
            "a frame novelty head on the deepest features")
