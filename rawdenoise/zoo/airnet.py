"""AirNet (All-in-One Image Restoration for Unknown Corruption, CVPR 2022): sRGB in [0, 1] in and out.

What runs at inference (the official test.py calls the network in eval mode with the degraded
image as both query and key):
- the first residual block of the contrastive encoder's query branch (`E.E.encoder_q.E_pre`: 3x3
  convs with BatchNorm in eval mode, 3 -> 64 channels, stride 1). Its feature map `inter` is the
  degradation representation the restorer is conditioned on. The rest of that encoder (two
  stride-2 blocks, global average pooling, MLP) only feeds the contrastive loss, so it is not
  computed and its weights are not part of this module;
- the restorer (`R`, DGRN): a 3x3 head, 5 groups of 5 blocks, each with two degradation-guided
  modules (a modulated deformable 3x3 conv whose offsets and mask come from a 3x3 conv on
  [features, inter], plus a 1x1 SFT affine from inter), then a 3x3 tail to RGB. No global
  residual and no clamp: test.py clips only when it scores or saves the image.

Nothing is strided or pooled on this path, so any size works (`multiple` 1). The receptive field
is data-dependent: each of the 50 deformable convs samples where its offsets point, and offsets
are unbounded outputs of a conv, so the manifest records it as unbounded (see `radius_note`).

Parameter names and shapes are those of the published `ckpt/All.pth` state_dict; the keys that
only training uses are named by `AirNet.training_only` and dropped when the file is imported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..spec import ModelSpec
from .deform import MIN_OPSET, check_export_form, deform_conv
from .registry import register

N_FEATS = 64
ENC_FEATS = 64
GROUPS, BLOCKS = 5, 5   # the published depth; smaller values build test-sized variants


def static_radius(groups: int = GROUPS, blocks: int = BLOCKS) -> int:
    """Receptive radius with every offset zero: head, (4 convs per block + 1) per group, body conv, tail.
    With every offset within D px each deformable conv reaches 1 + ceil(D) instead of 1."""
    return 3 + groups * (4 * blocks + 1)


# Keys of the published All.pth that inference does not read: the momentum key encoder, its
# negatives queue ([256, 5 * 256]: trained with batch size 5) and pointer, the query encoder's
# layers after its first block (they only produce the contrastive embedding), and BatchNorm's step
# counters (eval mode uses the running statistics only).
TRAINING_ONLY_PREFIXES = ("E.E.encoder_k.", "E.E.encoder_q.E.", "E.E.encoder_q.mlp.")
TRAINING_ONLY_NAMES = ("E.E.queue", "E.E.queue_ptr")
TRAINING_ONLY_SUFFIX = ".num_batches_tracked"


def radius_note(groups: int = GROUPS, blocks: int = BLOCKS) -> str:
    n, r = 2 * groups * blocks, static_radius(groups, blocks)
    return (f"data-dependent deformable sampling: {n} modulated deformable 3x3 convs sample where their offsets "
            f"(unbounded conv outputs) point; radius {r} px with zero offsets, at most {r} + {n} * ceil(D) px if "
            f"every offset is within D px")


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.leaky_relu(x, 0.1)


class _ResBlock(nn.Module):
    """Encoder block: conv-BN-lrelu-conv-BN plus a 1x1 conv-BN shortcut, then leaky ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                      nn.LeakyReLU(0.1), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.backbone(x) + self.shortcut(x))


class _DeformLayer(nn.Module):
    """Modulated deformable 3x3 conv (no bias) whose offsets and mask come from [x, inter]."""

    def __init__(self, channels: int, export: str):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        # 27 = 2 * 9 offsets ((dy, dx) per tap, interleaved) + 9 mask logits, one deformable group
        self.conv_offset_mask = nn.Conv2d(2 * channels, 27, 3, padding=1)
        # zero offsets and mask logits at creation, as in the reference: plain 3x3 sampling, mask 0.5
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)
        self.export = export

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset_mask(torch.cat([x, inter], dim=1))
        return deform_conv(x, out[:, :18], torch.sigmoid(out[:, 18:]), self.weight, None, padding=1,
                           export=self.export)


class _SFT(nn.Module):
    """x * gamma(inter) + beta(inter), each a 1x1 conv, leaky ReLU, 1x1 conv (no biases)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_gamma = nn.Sequential(_conv(channels, channels, 1, False), nn.LeakyReLU(0.1),
                                        _conv(channels, channels, 1, False))
        self.conv_beta = nn.Sequential(_conv(channels, channels, 1, False), nn.LeakyReLU(0.1),
                                       _conv(channels, channels, 1, False))

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        return x * self.conv_gamma(inter) + self.conv_beta(inter)


class _DGM(nn.Module):
    """Degradation-guided module: x + deformable conv + SFT."""

    def __init__(self, channels: int, export: str):
        super().__init__()
        self.dcn = _DeformLayer(channels, export)
        self.sft = _SFT(channels)

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        return x + self.dcn(x, inter) + self.sft(x, inter)


class _DGB(nn.Module):
    def __init__(self, channels: int, export: str):
        super().__init__()
        self.dgm1 = _DGM(channels, export)
        self.dgm2 = _DGM(channels, export)
        self.conv1 = _conv(channels, channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        y = _lrelu(self.dgm1(x, inter))
        y = _lrelu(self.conv1(y))
        y = _lrelu(self.dgm2(y, inter))
        return self.conv2(y) + x


class _DGG(nn.Module):
    """`blocks` blocks and a conv (all in `body`, as published), with a residual around them."""

    def __init__(self, channels: int, blocks: int, export: str):
        super().__init__()
        self.body = nn.Sequential(*[_DGB(channels, export) for _ in range(blocks)], _conv(channels, channels))

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.body[:-1]:
            y = block(y, inter)
        return self.body[-1](y) + x


class _DGRN(nn.Module):
    def __init__(self, groups: int, blocks: int, export: str):
        super().__init__()
        self.head = nn.Sequential(_conv(3, N_FEATS))
        self.body = nn.Sequential(*[_DGG(N_FEATS, blocks, export) for _ in range(groups)], _conv(N_FEATS, N_FEATS))
        self.tail = nn.Sequential(_conv(N_FEATS, 3))

    def forward(self, x: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        y = x
        for group in self.body[:-1]:
            y = group(y, inter)
        return self.tail(self.body[-1](y) + x)


def airnet_spec(deform_export: str = "deformconv", groups: int = GROUPS, blocks: int = BLOCKS) -> ModelSpec:
    check_export_form(deform_export)
    return ModelSpec(
        name="airnet", layout="rgb", channel_order="RGB", in_channels=3, out_channels=3, scale=1.0, offset=0.0,
        clip_input=False, output="image", multiple=1, receptive_radius=None, tile=512,
        notes={"preprocessing": "sRGB / 255 in [0, 1] (ToTensor), NCHW, no padding (the reference crops test images "
                                "to multiples of 16; the inference graph does not need it); output in the same "
                                "range, unclamped (the reference clips to [0, 1] only to score and save)",
               "unbounded_by": radius_note(groups, blocks),
               "tiling": "measured with random weights whose offsets average 2-4 px (max 16-32): tiles cut with "
                         "blend 'crop' differ from one pass by <= 2e-4 at overlap 32 and <= 3e-6 at 48; feathered "
                         "ramps of 48 px by 7e-3 (they weight pixels next to the cut); so pass blend='crop', "
                         "overlap=64 for near-exact tiles, or tile=0",
               "weights": "published ckpt/All.pth (all-in-one: noise sigma 15/25/50, rain, haze); import drops "
                          "its training-only keys: E.E.encoder_k.* (momentum key encoder), E.E.queue, "
                          "E.E.queue_ptr, E.E.encoder_q.E.* and E.E.encoder_q.mlp.* (contrastive embedding "
                          "only), *.num_batches_tracked",
               "deform_export": f"{deform_export}: ONNX "
                                + ("DeformConv (opset 19)" if deform_export == "deformconv" else
                                   "GridSample decomposition (opset 16) for runtimes without DeformConv"),
               "reference": "XLearning-SCU/2022-CVPR-AirNet net/model.py, net/encoder.py, net/DGRN.py, "
                            "net/deform_conv.py (mmcv modulated_deform_conv2d), test.py"},
    )


@register("airnet", spec=airnet_spec, description="AirNet (CVPR 2022) all-in-one restoration: sRGB in [0, 1], "
          "degradation-guided DGRN with modulated deformable convs; loads the published All.pth")
class AirNet(nn.Module):
    """`deform_export` picks the ONNX form of the deformable convs (see deform.EXPORT_FORMS); it is
    stored in the artifact, so `converters.torch2onnx` uses it. `groups`/`blocks` other than 5/5
    build smaller test variants that the published weights do not fit."""

    def __init__(self, deform_export: str = "deformconv", groups: int = GROUPS, blocks: int = BLOCKS):
        super().__init__()
        export = check_export_form(deform_export)
        if int(groups) < 1 or int(blocks) < 1:
            raise InputError(f"airnet groups and blocks must be >= 1, got groups={groups} blocks={blocks}; "
                             f"the published weights use {GROUPS} and {BLOCKS}")
        self.min_onnx_opset = MIN_OPSET[export]
        self.R = _DGRN(int(groups), int(blocks), export)
        # nested like the published checkpoint: E (CBDE) . E (MoCo) . encoder_q (ResEncoder) . E_pre
        self.E = nn.ModuleDict({"E": nn.ModuleDict({"encoder_q": nn.ModuleDict({"E_pre": _ResBlock(3, ENC_FEATS)})})})

    @staticmethod
    def training_only(name: str) -> str | None:
        """The group ('E.E.encoder_k.*', ...) of a published key that inference never reads, else None.
        converters.import_weights drops these keys and lists the groups in the manifest's notes."""
        if name in TRAINING_ONLY_NAMES:
            return name
        prefix = next((p for p in TRAINING_ONLY_PREFIXES if name.startswith(p)), None)
        if prefix:
            return prefix + "*"
        return "*" + TRAINING_ONLY_SUFFIX if name.endswith(TRAINING_ONLY_SUFFIX) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inter = self.E["E"]["encoder_q"]["E_pre"](x)
        return self.R(x, inter)
