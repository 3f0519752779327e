"""Widen a trained UNet without changing what it computes, to fine-tune the extra capacity.

Every layer of the wider network keeps the trained weights on its first (old) channels. The new
channels get fresh random incoming weights, and every weight by which an old channel would read a
new one is zero. So the old channels compute exactly what they computed before and the new ones
are ignored by the output until training moves those zero weights; the new channels' activations
are non-zero, so those weights get gradients from the first step.
"""

from __future__ import annotations

import re

import torch

from rawdenoise.errors import InputError

# the first conv of a decoder block reads torch.cat([upsampled, skip]): two halves of the input
_DECODER_INPUT = re.compile(r"dec\.\d+\.0\.weight")


def _old_input_index(key: str, n_old: int, n_new: int) -> torch.Tensor:
    """Where the old input channels sit among the new ones."""
    if _DECODER_INPUT.fullmatch(key):
        half_old, half_new = n_old // 2, n_new // 2
        return torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)])
    return torch.arange(n_old)


def widen_unet_state(old: dict, model: torch.nn.Module) -> dict:
    """A state dict for `model`, a UNet of the same depth as the one `old` belongs to and at least
    as wide, on which `model` computes exactly what the old network computes."""
    new = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if set(new) != set(old):
        raise InputError("the init network and this config's network differ in more than width "
                         f"(layers only in one of them: {sorted(set(new) ^ set(old))})")
    for key, w_old in old.items():
        w = new[key]
        if w.dim() != w_old.dim() or any(a < b for a, b in zip(w.shape, w_old.shape)):
            raise InputError(f"cannot widen {key}: {tuple(w_old.shape)} -> {tuple(w.shape)}; "
                             "the config's width must be at least the init model's")
        if w.dim() == 1:                    # bias: one value per output channel
            w[: w_old.shape[0]] = w_old
            continue
        # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw)
        transposed = key.startswith("up.")
        out_ax, in_ax = (1, 0) if transposed else (0, 1)
        n_out = w_old.shape[out_ax]
        idx = _old_input_index(key, w_old.shape[in_ax], w.shape[in_ax])
        view = w.transpose(0, 1) if transposed else w          # (out, in, kh, kw) view of the new tensor
        old_view = w_old.transpose(0, 1) if transposed else w_old
        view[:n_out] = 0.0                                      # old outputs read no new input ...
        view[:n_out, idx] = old_view                            # ... and their old inputs as before
    return new
