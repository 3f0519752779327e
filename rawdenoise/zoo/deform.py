"""Modulated deformable convolution (DCNv2) in plain torch, with mmcv's semantics, and its ONNX forms.

Semantics (those of mmcv's `modulated_deform_conv2d`, which published DCNv2 checkpoints were
trained with): output pixel (oy, ox), kernel tap k = i * kw + j and deformable group g sample
input channel c of group g at

    y = oy * stride - pad + i * dilation + offset[n, g * 2K + 2k,     oy, ox]
    x = ox * stride - pad + j * dilation + offset[n, g * 2K + 2k + 1, oy, ox]

bilinearly, each of the four neighbours counting as zero outside the image, and multiply the
sample by mask[n, g * K + k, oy, ox] (the caller applies any sigmoid). So the offsets are (y, x)
pairs interleaved tap by tap; ONNX `DeformConv` (opset 19) reads its offset and mask inputs in
exactly this layout, so the export passes them through unchanged.

Sampling uses `grid_sample` (zeros padding, align_corners=False), one kernel tap at a time, each
tap followed by a 1x1 convolution with that tap's weights, so at most one sampled copy of the input
is alive at once. In float32 the position round trip through the normalised grid costs about
size * 2**-24 px, negligible for tile-sized inputs.

Export forms (`EXPORT_FORMS`): "deformconv" writes one ONNX DeformConv node (run here on ONNX
Runtime 1.32 CPU; TensorRT lists it from 10.1); "gridsample" writes the decomposition, every tap in
one GridSample (opset 16), for runtimes without DeformConv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

EXPORT_FORMS = ("deformconv", "gridsample")
# lowest ONNX opset each export form needs
MIN_OPSET = {"deformconv": 19, "gridsample": 16}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_export_form(form: str) -> str:
    if form not in EXPORT_FORMS:
        raise InputError(f"deform_export {form!r} is not one of {', '.join(EXPORT_FORMS)}; use 'deformconv' "
                         f"(one ONNX DeformConv op, opset 19) or 'gridsample' (for runtimes without DeformConv)")
    return form


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                            groups: int = 1, deform_groups: int = 1, all_taps: bool = False) -> torch.Tensor:
    """DCNv2 with mmcv's offset layout and sampling rule (see the module docstring); differentiable.

    x (N, C, H, W); offset (N, deform_groups * 2 * kh * kw, Ho, Wo); mask (N, deform_groups * kh * kw,
    Ho, Wo); weight (O, C / groups, kh, kw); bias (O,) or None. `all_taps` samples every tap in one
    grid_sample and applies one 1x1 conv over C * kh * kw channels: a small graph for export, but kh * kw
    times the memory of a tap at a time.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    g = int(deform_groups)
    h, w = x.shape[2], x.shape[3]
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    # positions in half precision would be off by up to a pixel on large inputs: sample in float32
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    off = offset.to(dtype).unflatten(1, (g, -1, 2))     # (N, G, K, 2, Ho, Wo)
    msk = mask.unflatten(1, (g, -1))                    # (N, G, K, Ho, Wo)
    src = x.to(dtype).unflatten(1, (g, -1)).flatten(0, 1)   # (N * G, C / G, H, W)
    # sampling position of tap (i, j) at output pixel (oy, ox): o * stride - pad + tap * dilation + offset
    rows = torch.arange(offset.shape[2], dtype=dtype, device=x.device).reshape(1, 1, 1, -1, 1) * sh - ph
    cols = torch.arange(offset.shape[3], dtype=dtype, device=x.device).reshape(1, 1, 1, 1, -1) * sw - pw
    tap_y = torch.tensor([i * dh for i in range(kh) for _ in range(kw)], dtype=dtype, device=x.device)
    tap_x = torch.tensor([j * dw for _ in range(kh) for j in range(kw)], dtype=dtype, device=x.device)
    py = rows + tap_y.reshape(1, 1, -1, 1, 1) + off[:, :, :, 0]      # (N, G, K, Ho, Wo)
    px = cols + tap_x.reshape(1, 1, -1, 1, 1) + off[:, :, :, 1]
    # grid_sample's normalised coordinates (align_corners=False): pixel p -> (2p + 1) / size - 1
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).flatten(0, 1)  # (N*G, K, Ho, Wo, 2)
    if all_taps:
        sampled = F.grid_sample(src, grid.flatten(1, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.to(x.dtype).unflatten(2, (kh * kw, -1)).unflatten(0, (-1, g)) * msk.unsqueeze(2)
        out = F.conv2d(sampled.flatten(1, 3), weight.flatten(1).unsqueeze(-1).unsqueeze(-1), groups=groups)
    else:
        out = None
        for k in range(kh * kw):
            sampled = F.grid_sample(src, grid[:, k], mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = (sampled.to(x.dtype).unflatten(0, (-1, g)) * msk[:, :, k].unsqueeze(2)).flatten(1, 2)
            y = F.conv2d(sampled, weight[:, :, k // kw, k % kw, None, None], groups=groups)
            out = y if out is None else out + y
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


class _DeformConvOp(torch.autograd.Function):
    """The TorchScript ONNX exporter writes one DeformConv node for it (`symbolic`)."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
        # Computed out of the tracer's sight, or every op of the decomposition would be recorded
        # (and checked) inside this node before `symbolic` replaces it; the clone gives the tracer
        # a recorded output.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                out = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups,
                                              deform_groups)
        finally:
            torch._C._set_tracing_state(state)
        return out.clone()

    @staticmethod
    def symbolic(g, x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
        (ph, pw) = padding
        # ONNX input order is X, W, offset, B, mask; offsets and mask already have ONNX's layout
        return g.op("DeformConv", x, weight, offset, bias, mask, strides_i=list(stride), pads_i=[ph, pw, ph, pw],
                    dilations_i=list(dilation), group_i=groups, offset_group_i=deform_groups)


def deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None, *, stride=1, padding=0, dilation=1, groups: int = 1,
                deform_groups: int = 1, export: str = "deformconv") -> torch.Tensor:
    """`modulated_deform_conv2d`, exported to ONNX in form `export` (see EXPORT_FORMS)."""
    if export == "deformconv" and torch.onnx.is_in_onnx_export():
        if bias is None:  # DeformConv's B input comes before the mask, so give zeros
            bias = weight.new_zeros(weight.shape[0])
        return _DeformConvOp.apply(x, offset, mask, weight, bias, _pair(stride), _pair(padding), _pair(dilation),
                                   int(groups), int(deform_groups))
    # exported as GridSample, every tap at once keeps the graph small
    return modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups,
                                   all_taps=export == "gridsample" and torch.onnx.is_in_onnx_export())
