"""Generators as a lab defines them in its own code (not labelfactory's): a DCGAN and a
class-conditional variant, to be run through the ``torch-module`` backend by import path."""

from __future__ import annotations

import torch
from torch import nn


def _up(cin: int, cout: int, leak: float = 0.0) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(leak, True)]


class DCGAN(nn.Module):
    """Radford et al.'s DCGAN generator (the PyTorch example's ``netG``): z ``[B, nz, 1, 1]``
    → tanh image ``[B, 3, size, size]`` (size = 4 · 2^k); ``leak`` 0 is the original ReLU."""

    def __init__(self, nz: int = 16, ngf: int = 8, size: int = 16, leak: float = 0.0):
        super().__init__()
        n_up = (size // 4).bit_length() - 1
        chans = [ngf * 2 ** (n_up - 1 - i) for i in range(n_up)]
        layers = [nn.ConvTranspose2d(nz, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]),
                  nn.LeakyReLU(leak, True)]
        for cin, cout in zip(chans, chans[1:]):
            layers += _up(cin, cout, leak)
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


class ConditionalDCGAN(nn.Module):
    """A class-conditional DCGAN: a class embedding joins z, and images come out in [0, 1]
    (sigmoid). ``onehot``: ``forward(z, y)`` takes one-hot vectors, else class indices;
    both give the same image for the same weights."""

    def __init__(self, nz: int = 16, ngf: int = 8, size: int = 32, num_classes: int = 2, embed_dim: int = 8,
                 onehot: bool = False):
        super().__init__()
        self.onehot = onehot
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(nz + embed_dim, ngf * 4 * 4 * 4)
        self.ngf = ngf
        n_up = (size // 4).bit_length() - 1
        chans = [ngf * 4 // 2 ** i for i in range(n_up)]
        layers = []
        for cin, cout in zip(chans, chans[1:]):
            layers += _up(cin, cout)
        self.blocks = nn.Sequential(*layers)
        self.to_rgb = nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1)

    def forward(self, z, y):
        e = y @ self.embed.weight if self.onehot else self.embed(y)
        h = self.fc(torch.cat([z, e], 1)).view(len(z), self.ngf * 4, 4, 4)
        return torch.sigmoid(self.to_rgb(self.blocks(torch.relu(h))))


class BatchStatsDCGAN(DCGAN):
    """A DCGAN whose batch norms always use the batch's statistics (as if left in train mode)."""

    def forward(self, z):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        return self.main(z)
