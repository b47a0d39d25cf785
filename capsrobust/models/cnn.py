"""The baseline CNN of Hinton, Sabour & Frosst (ICLR 2018), §5: ~4.2M parameters."""

from __future__ import annotations

from torch import Tensor, nn

from capsrobust.models.preprocessing import PerImageStandardisation


class BaselineCNN(nn.Module):
    """conv5x5(32)+pool, conv5x5(64)+pool ("same" padding), FC 1024 + dropout, FC classes; ReLU.

    images (N, C, 32, 32) in [0, 1] -> logits (N, classes) (``score_kind = "logits"``).
    """

    score_kind = "logits"

    def __init__(self, in_channels: int = 2, num_classes: int = 5, dropout: float = 0.5) -> None:
        super().__init__()
        self.standardise = PerImageStandardisation()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32 -> 16
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 16 -> 8
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(self.standardise(images)))
