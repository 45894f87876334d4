"""The seed thesis's optional geometry-encoding network: a small U-Net turns the frame into pixel-aligned
features; at each sample, the feature under its projection and its canonical point predict a
displacement, so x' = x_c + μ (x̂ − x_c) with x̂ = x_c + δ the network's point and μ the morphing factor.
A morphing loss keeps the displacements small (v1: sum of their norms, v2: mean)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.fields.encodings import PositionalEncoding, TinyMLP
from engine.geometry.camera import Camera, project


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Three-level U-Net: RGB [1, 3, H, W] → features [1, C, H, W] (any H, W)."""

    def __init__(self, features: int = 16, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.out = nn.Conv2d(w, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2, ceil_mode=True))
        e3 = self.enc3(F.max_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return self.out(d1)


class GeometryEncoder(nn.Module):
    """Image features + canonical point → canonical displacement δ (zero at the start)."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.unet = UNet(features)
        self.pe = PositionalEncoding(4)
        self.mlp = TinyMLP(features + self.pe.out_dim, 64, 2, 3, last_zero_init=True)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[H, W, 3] in [0, 1] → feature map [1, C, H, W]."""
        return self.unet(image.permute(2, 0, 1)[None] * 2 - 1)

    def displacement(self, fmap: torch.Tensor, camera: Camera, x_world: torch.Tensor, x_c: torch.Tensor) -> torch.Tensor:
        """δ [P, 3] for world points [P, 3] (sampled in the frame's feature map) with canonical points [P, 3]."""
        uv = project(x_world, camera)
        size = torch.tensor([camera.width, camera.height], dtype=uv.dtype, device=uv.device)
        grid = ((uv + 0.5) / size * 2 - 1).clamp(-2, 2)  # pixel centres → [-1, 1]; far outside reads zeros
        feat = F.grid_sample(fmap, grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0, :, 0].T  # [P, C]
        return self.mlp(torch.cat([feat, self.pe(x_c)], -1))
