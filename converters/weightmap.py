"""Declarative, strict weight mapping from Paddle / TensorFlow / PyTorch tensors to a zoo module.

A map is a list of `Entry(target, source, transforms)`: the torch state_dict name to fill, the
canonical source name it comes from, and the layout transforms to apply on the way. Maps are
derived from the module itself (each parameter's owner decides its layout rule), with per
architecture naming rules in `NAMING`; so the map is data that can be printed and checked.

Layout rules (source -> torch):
- TF conv kernel HWIO -> OIHW; TF depthwise [kh, kw, in, mult] -> [in*mult, 1, kh, kw];
  TF transposed conv [kh, kw, out, in] -> [in, out, kh, kw]; TF/Paddle dense [in, out] -> [out, in].
- Paddle Conv2D (OIHW) and Conv2DTranspose ([in, out, kh, kw]) already match torch.
- BatchNorm: TF gamma/beta/moving_mean/moving_variance and Paddle _mean/_variance renamed; the
  epsilon difference (Keras 1e-3 vs the torch module's eps) folded into the running variance.
- `depth_to_space`: TF is DCR, torch pixel_shuffle is CRD; `dcr_to_crd:R` permutes the output
  channels of the conv feeding it (declared per architecture in `DEPTH_TO_SPACE`).

Strict: every source tensor is used once, every target is filled, every shape is checked; a
mismatch lists the offending names with their closest candidates.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from rawdenoise.errors import ConversionError

FRAMEWORKS = ("torch", "paddle", "tf")
SOURCE_BN_EPS = {"tf": 1e-3, "paddle": 1e-5, "torch": 1e-5}


# ---- transforms -------------------------------------------------------------------------------
def _hwio_to_oihw(w, _):
    return w.transpose(3, 2, 0, 1)


def _tf_depthwise(w, _):
    kh, kw, cin, mult = w.shape
    return w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)


def _tf_deconv(w, _):
    return w.transpose(3, 2, 0, 1)  # [kh, kw, out, in] -> [in, out, kh, kw]


def _dense_t(w, _):
    return w.T


def _dcr_to_crd(w, arg):
    """Reorder output channels from TF depth_to_space order (DCR) to torch pixel_shuffle (CRD)."""
    r = int(arg)
    n = w.shape[0]
    if n % (r * r):
        raise ConversionError(f"dcr_to_crd:{r} needs a channel count divisible by {r * r}, got {n}")
    c = n // (r * r)
    # torch channel c*r*r + i*r + j takes TF channel (i*r + j)*c_out + c
    idx = np.arange(n).reshape(r * r, c).T.reshape(-1)
    return w[idx]


def _bn_var_eps(v, arg):
    # (x - m) / sqrt(v + eps_src) == (x - m) / sqrt((v + eps_src - eps_torch) + eps_torch)
    return v + float(arg)


TRANSFORMS: dict[str, Callable[[np.ndarray, str | None], np.ndarray]] = {
    "hwio_to_oihw": _hwio_to_oihw,
    "tf_depthwise": _tf_depthwise,
    "tf_deconv": _tf_deconv,
    "dense_t": _dense_t,
    "dcr_to_crd": _dcr_to_crd,
    "bn_var_eps": _bn_var_eps,
}


def apply_transforms(value: np.ndarray, transforms: Iterable[str]) -> np.ndarray:
    for t in transforms:
        name, _, arg = t.partition(":")
        value = TRANSFORMS[name](value, arg or None)
    return np.ascontiguousarray(value)


@dataclass(frozen=True)
class Entry:
    target: str
    source: str
    transforms: tuple[str, ...] = ()
    kind: str = ""  # Keras class of the owning layer (snake case), for files that lost layer names


# ---- per-architecture declarations -----------------------------------------------------------
# How a torch name becomes the source name of each framework. "dotted": same as torch (Paddle
# layers share torch's naming); "slashed": '.' -> '/' (TF variable scopes). Architectures whose
# published names differ get explicit tables here.
NAMING: dict[str, dict[str, str]] = {
    "pmrid": {"torch": "dotted", "paddle": "dotted", "tf": "slashed"},
    "n2n": {"torch": "dotted", "paddle": "dotted", "tf": "slashed"},
    "n2n_paddle": {"torch": "dotted", "paddle": "dotted", "tf": "slashed"},
    "invdn": {"torch": "dotted", "paddle": "dotted"},
}
# conv (torch module name) -> depth_to_space block size, for architectures that use pixel_shuffle
DEPTH_TO_SPACE: dict[str, dict[str, int]] = {}

_TF_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_PADDLE_BN = {"running_mean": "_mean", "running_var": "_variance"}


def build_map(module, framework: str, arch: str | None = None) -> list[Entry]:
    """The map filling `module`'s state_dict from a `framework` checkpoint of architecture `arch`."""
    from torch import nn

    if framework not in FRAMEWORKS:
        raise ConversionError(f"unknown source framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")
    naming = NAMING.get(arch or "", {}).get(framework, "slashed" if framework == "tf" else "dotted")
    d2s = DEPTH_TO_SPACE.get(arch or "", {})
    owners = dict(module.named_modules())
    entries: list[Entry] = []
    for name, tensor in module.state_dict().items():
        owner_name, _, leaf = name.rpartition(".")
        owner = owners.get(owner_name)
        if leaf == "num_batches_tracked":
            continue  # bookkeeping, filled by the target module itself
        transforms: list[str] = []
        src_leaf = leaf
        is_bn = isinstance(owner, nn.modules.batchnorm._BatchNorm)
        kind = _keras_kind(owner, nn)
        if framework == "tf":
            if is_bn:
                src_leaf = _TF_BN[leaf]
            elif isinstance(owner, nn.ConvTranspose2d) and leaf == "weight":
                transforms.append("tf_deconv")
            elif isinstance(owner, nn.Conv2d) and leaf == "weight":
                depthwise = owner.groups > 1 and owner.groups == owner.in_channels
                if owner.groups > 1 and not depthwise:
                    raise ConversionError(
                        f"{name}: grouped convolutions ({owner.groups} groups) have no TF layout rule")
                transforms.append("tf_depthwise" if depthwise else "hwio_to_oihw")
            elif isinstance(owner, nn.Linear) and leaf == "weight":
                transforms.append("dense_t")
        elif framework == "paddle":
            if is_bn:
                src_leaf = _PADDLE_BN.get(leaf, leaf)
            elif isinstance(owner, nn.Linear) and leaf == "weight":
                transforms.append("dense_t")
        if is_bn and leaf == "running_var" and SOURCE_BN_EPS[framework] != owner.eps:
            transforms.append(f"bn_var_eps:{SOURCE_BN_EPS[framework] - owner.eps!r}")
        if owner_name in d2s and framework == "tf" and leaf in ("weight", "bias"):
            transforms.append(f"dcr_to_crd:{d2s[owner_name]}")
        sep = "/" if naming == "slashed" else "."
        source = (owner_name.replace(".", sep) + sep if owner_name else "") + src_leaf
        entries.append(Entry(name, source, tuple(transforms), kind))
    return entries


def _keras_kind(owner, nn) -> str:
    if isinstance(owner, nn.ConvTranspose2d):
        return "conv2d_transpose"
    if isinstance(owner, nn.Conv2d):
        return "depthwise_conv2d" if owner.groups > 1 and owner.groups == owner.in_channels else "conv2d"
    if isinstance(owner, nn.Linear):
        return "dense"
    if isinstance(owner, nn.modules.batchnorm._BatchNorm):
        return "batch_normalization"
    return ""


# ---- source name normalisation ---------------------------------------------------------------
_TF_SKIP = re.compile(r"(^_CHECKPOINTABLE_OBJECT_GRAPH$|^save_counter|^global_step|OPTIMIZER_SLOT|^optimizer/"
                      r"|/Adam(_1)?$|/Momentum$|^beta[12]_power$)")


def normalise_tf_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF/Keras variable names to 'scope/layer/leaf' with leaf weight|bias|gamma|...; bookkeeping dropped.

    Handles TF1 names ('net/enc_conv0/weight'), object checkpoints ('.../.ATTRIBUTES/VARIABLE_VALUE'),
    Keras h5 ('enc_conv0/enc_conv0/kernel:0') and Keras 3 '.weights.h5' ('layers/enc_conv0/vars/0' ->
    'layers/enc_conv0/#0', matched by position within the layer).
    """
    out: dict[str, np.ndarray] = {}
    for raw, value in tensors.items():
        name = raw.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")
        if _TF_SKIP.search(name):
            continue
        name = re.sub(r":\d+$", "", name)
        name = re.sub(r"/vars/(\d+)$", r"/#\1", name)
        name = re.sub(r"/_?(depthwise_kernel|kernel)$", "/weight", name)
        if name in out:
            raise ConversionError(f"two source tensors normalise to the same name {name!r}")
        out[name] = value
    return out


def _find_source(entry: Entry, position: int, names: list[str], sep: str) -> list[str]:
    """Source names that `entry.source` designates: exact, or a unique scoped suffix."""
    if entry.source in names:
        return [entry.source]
    hits = [n for n in names if n.endswith(sep + entry.source)]
    if not hits:
        layer = entry.source.rpartition(sep)[0]
        pos_name = f"{layer}{sep}#{position}" if layer else f"#{position}"
        hits = [n for n in names if n == pos_name or n.endswith(sep + pos_name)]
    return hits


_KERAS3 = re.compile(r"^(?:.*/)?layers/(?P<cls>[a-z][a-z0-9_]*?)(?:_(?P<n>\d+))?/#(?P<i>\d+)$")


def resolve_keras3_positions(entries: list[Entry], sources: Mapping[str, np.ndarray], sep: str = "/"):
    """Keras 3 `.weights.h5` names layers by class and counter ('layers/conv2d_3/vars/0'), not by
    layer name. Within each class the counter follows the model's layer order, so the k-th layer of a
    class is the k-th module of that kind in the torch module's declaration order; shapes are still
    checked afterwards. Returns `sources` renamed to '<layer>/#<i>', or unchanged for other files.
    """
    groups: dict[str, dict[int, list[str]]] = {}
    for name in sources:
        m = _KERAS3.match(name)
        if not m:
            return sources
        groups.setdefault(m["cls"], {}).setdefault(int(m["n"] or 0), []).append(name)
    layers_of_kind: dict[str, list[str]] = {}
    for e in entries:
        layer = e.source.rpartition(sep)[0]
        lst = layers_of_kind.setdefault(e.kind, [])
        if layer not in lst:
            lst.append(layer)
    renamed: dict[str, np.ndarray] = {}
    for cls, by_n in groups.items():
        targets = layers_of_kind.get(cls, [])
        for k, n in enumerate(sorted(by_n)):
            layer = targets[k] if k < len(targets) else f"<extra {cls} layer {n}>"
            for name in by_n[n]:
                renamed[f"{layer}{sep}#{_KERAS3.match(name)['i']}"] = sources[name]
    return renamed


def drop_training_only(module, sources: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(kept sources, {group: count} dropped): the tensors an architecture declares training-only
    through `module.training_only(name) -> group | None` (e.g. a contrastive encoder's key branch).
    Architectures without that rule keep every tensor, so the strict map still sees them all."""
    rule = getattr(module, "training_only", None)
    if rule is None:
        return dict(sources), {}
    kept: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for name, value in sources.items():
        group = rule(name)
        if group is None:
            kept[name] = value
        else:
            dropped[group] = dropped.get(group, 0) + 1
    return kept, dropped


def _close(name: str, pool: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(pool), n=3, cutoff=0.4)
    return f" (closest: {', '.join(close)})" if close else ""


def apply_map(entries: list[Entry], sources: Mapping[str, np.ndarray], target_shapes: Mapping[str, tuple],
              framework: str) -> dict[str, np.ndarray]:
    """target name -> float32 array, or ConversionError listing every problem at once."""
    sep = "/" if any("/" in e.source for e in entries) else "."
    if framework == "tf":
        sources = resolve_keras3_positions(entries, sources, sep)
    names = list(sources)
    used: dict[str, str] = {}
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    per_layer: dict[str, int] = {}
    for e in entries:
        layer = e.source.rpartition(sep)[0]
        position = per_layer.get(layer, 0)
        per_layer[layer] = position + 1
        hits = _find_source(e, position, names, sep)
        if not hits:
            problems.append(f"missing {e.source!r} for {e.target}{_close(e.source, names)}")
            continue
        if len(hits) > 1:
            problems.append(f"ambiguous source for {e.target}: {', '.join(hits[:4])}")
            continue
        src = hits[0]
        if src in used:
            problems.append(f"source {src!r} claimed by both {used[src]} and {e.target}")
            continue
        used[src] = e.target
        value = np.asarray(sources[src])
        if value.dtype.kind not in "fiu":
            problems.append(f"{src!r} has non-numeric dtype {value.dtype}")
            continue
        try:
            value = apply_transforms(value.astype(np.float32), e.transforms)
        except (ValueError, IndexError) as err:
            problems.append(f"{src!r} (shape {tuple(np.shape(sources[src]))}) cannot take {list(e.transforms)}: {err}")
            continue
        want = tuple(target_shapes[e.target])
        if value.shape != want:
            raw_shape = tuple(np.shape(sources[src]))
            how = list(e.transforms) or "no transform"
            problems.append(f"shape of {src!r} {raw_shape} -> {value.shape} after {how}"
                            f", but {e.target} needs {want}")
            continue
        out[e.target] = value
    unused = [n for n in names if n not in used]
    for n in unused:
        unfilled = [e.source for e in entries if e.target not in out]
        problems.append(f"unused source tensor {n!r} {tuple(np.shape(sources[n]))}{_close(n, unfilled)}")
    if problems:
        if not used and names:
            problems.insert(0, f"none of the {len(names)} source tensors matched a parameter (wrong --arch?)")
        shown = "; ".join(problems[:12]) + (f"; ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ConversionError(f"{framework} weights do not match the architecture ({len(problems)} problems): {shown}")
    return out
