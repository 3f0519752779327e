"""The SDK's `.pt` artifact: manifest + architecture name and arguments + state_dict.

It holds tensors and plain containers only, so it loads with `torch.load(weights_only=True)`;
a file whose pickle would import or call anything else is refused before anything runs.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from ..errors import ModelFileError, UnsafeFileError, InputError
from ..fileio import atomic_output
from ..spec import ModelSpec
from ..tiling import suggest_tile
from . import registry

FORMAT = "rawdenoise.pt"
FORMAT_VERSION = 1


def pickle_globals(data: bytes) -> list[str] | None:
    """The `module.name` globals a pickle stream would import, read with pickletools (nothing is
    executed); None when the bytes are not a complete pickle stream."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if op.name == "STOP":
                return names
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        return None
    return None


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a torch file: data.pkl of a zip archive, or the file itself."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                return z.read(name) if name else b""
        except (zipfile.BadZipFile, OSError, KeyError):
            return b""
    return path.read_bytes()


# modules a torch state_dict's pickle legitimately names (torch.load(weights_only=True) allows them)
_TORCH_PICKLE_MODULES = ("torch.", "collections.", "_codecs.", "numpy.")


def safe_torch_load(path):
    """torch.load with weights_only=True, translating failures into clear SDK errors: a file whose
    pickle names code to import is unsafe; one whose bytes do not even parse is corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = pickle_globals(_pickle_bytes(path))
        if names is None:
            raise ModelFileError(f"{path} is not a readable torch file: its contents are not a complete pickle "
                                 f"(truncated, corrupt, or not a torch.save file)") from None
        foreign = sorted({n for n in names if not n.startswith(_TORCH_PICKLE_MODULES)})
        detail = f"it names {', '.join(foreign[:3])}" if foreign else str(e).strip().splitlines()[-1][:200]
        raise UnsafeFileError(
            f"{path} was refused: its pickle would import or call code beyond tensors and plain "
            f"containers ({detail}); nothing from it was executed. Re-save the weights "
            f"as a plain state_dict or convert them with python -m converters.import_weights"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not a readable torch file (truncated or corrupt?): "
                             f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None


# where training scripts commonly nest the state_dict inside a checkpoint
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "params_ema", "params", "net", "network", "generator")


def find_state_dict(obj, path) -> dict:
    """The tensor dict inside a loaded checkpoint: the object itself or the one nested under a usual
    key, with DataParallel's `module.` prefix removed."""
    def tensors_only(d):
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise InputError(f"{path} is already a rawdenoise artifact; use it directly")
    state = obj if tensors_only(obj) else None
    if state is None and isinstance(obj, dict):
        state = next((obj[k] for k in STATE_DICT_KEYS if tensors_only(obj.get(k))), None)
    if state is None:
        top = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ModelFileError(f"{path} holds no state_dict (top level: {top}); save module.state_dict(), or nest "
                             f"it under one of {', '.join(STATE_DICT_KEYS)}")
    if all(str(k).startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def save(module: torch.nn.Module, path, spec: ModelSpec | None = None, *, overwrite: bool = True) -> ModelSpec:
    """Write `module` (built by `zoo.create`) as a `.pt` artifact; returns the manifest written.

    With no spec, the architecture's default manifest is used, with the receptive-field radius
    measured from the module and a preferred tile derived from it; a given manifest without a
    radius gets one measured.
    """
    arch = getattr(module, "rawdenoise_arch", None)
    if arch is None:
        raise InputError(
            "module was not built by rawdenoise.zoo.create, so its architecture cannot be recorded; "
            "build it with zoo.create(name, **kwargs) and load_state_dict your weights into it"
        )
    name, kwargs = arch
    if spec is None:
        # default manifest: measured receptive field, and a tile large enough that the overlap
        # costs at most 25 % extra compute (an architecture may declare it unbounded: None)
        spec = registry.default_spec(name, **kwargs)
        if spec.receptive_radius == 0:
            radius = measure_receptive_radius(module, spec)
            spec = spec.replace(receptive_radius=radius, tile=suggest_tile(radius, spec.multiple))
    elif spec.receptive_radius == 0:
        spec = spec.replace(receptive_radius=measure_receptive_radius(module, spec))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "arch": name,
        "arch_kwargs": dict(kwargs),
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return spec


def read(path) -> dict:
    """The artifact's payload (validated), without building the module."""
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = "a plain state_dict" if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(
            f"{path} is {kind}, not a rawdenoise .pt artifact; convert it with "
            f"python -m converters.import_weights {path} --arch NAME -o model.pt"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer rawdenoise (format {payload['format_version']}); upgrade")
    for key in ("spec", "arch", "arch_kwargs", "state_dict"):
        if key not in payload:
            raise ModelFileError(f"{path} is a damaged artifact: missing '{key}'")
    return payload


def load(path) -> tuple[torch.nn.Module, ModelSpec]:
    """Build the module of a `.pt` artifact (CPU, eval mode) and return it with its manifest."""
    payload = read(path)
    spec = ModelSpec.from_dict(payload["spec"])
    module = registry.create(payload["arch"], **payload["arch_kwargs"])
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit architecture {payload['arch']!r}: {str(e)[:300]}") from None
    return module.eval(), spec


def measure_receptive_radius(module: torch.nn.Module, spec: ModelSpec, max_size: int = 2048) -> int:
    """Receptive-field radius in network-input pixels, from the support of the input gradient.

    The gradient of a `multiple` x `multiple` block of outputs (all pooling phases) with respect
    to a random input is exactly zero outside the receptive field and non-zero inside it. Extra
    inputs that are maps (e.g. a latent at 1/4 resolution) are tiled with the image, so their
    support counts too, each of their pixels standing for `stride` x `stride` image pixels.
    """
    m = spec.multiple
    size = max(128, 8 * m)
    was_training = module.training
    module.eval()
    try:
        while True:
            size = -(-size // m) * m
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(1, spec.in_channels, size, size, generator=gen, dtype=torch.float32)
            extras = [torch.randn(i.shape(1, size, size), generator=gen) for i in spec.separate_inputs]
            leaves = [(x, 1)] + [(e, i.stride) for e, i in zip(extras, spec.separate_inputs) if i.stride]
            for t, _ in leaves:
                t.requires_grad_(True)
            b0 = size // 2 // m * m
            y = module(x, *extras)
            grads = torch.autograd.grad(y[:, :, b0:b0 + m, b0:b0 + m].sum(), [t for t, _ in leaves],
                                        allow_unused=True)
            lo, hi = size, -1
            for g, (_, stride) in zip(grads, leaves):
                if g is None:
                    continue
                support = g.abs().sum(dim=(0, 1)) > 0
                rows = torch.nonzero(support.any(dim=1)).flatten()
                cols = torch.nonzero(support.any(dim=0)).flatten()
                if len(rows):
                    lo = min(lo, int(min(rows.min(), cols.min())) * stride)
                    hi = max(hi, int(max(rows.max(), cols.max())) * stride + stride - 1)
            if (lo > 0 and hi < size - 1) or size >= max_size:
                return max(b0 - lo, hi - (b0 + m - 1), 0)
            size *= 2
    finally:
        module.train(was_training)
