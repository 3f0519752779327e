"""Which files a batch job denoises, and where each output goes.

Inputs: glob patterns (`**` recurses), folders (every file with a RAW suffix below them, see
`RAW_SUFFIXES`), files, and manifests (`.txt`: one input per line, `#` comments; relative lines are
relative to the manifest's folder). Files inside the output folder are never picked up by a folder
or a pattern. Output names keep the input's folder below its root (the folder given, the fixed part
of a pattern, the manifest's folder; a file named on its own has its name only), so a re-run maps
every file to the same output; two inputs that would still share an output are refused before any
work starts.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .errors import InputError

# what a folder given as input contributes (patterns and manifests take any file they name)
RAW_SUFFIXES = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .raf .orf .rw2 .rwl .pef .srw .3fr .fff .iiq .erf .kdc "
    ".dcr .mos .mrw .x3f .gpr .npy .raw .bin".split())
MANIFEST_SUFFIXES = (".txt",)
OUTPUT_SUFFIXES = {"dng": ".dng", "tiff": ".tif", "npy": ".npy"}


# ---- inputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input file and where its output goes below the output folder (suffix still the input's)."""
    path: Path
    rel: PurePath
    missing: bool = False           # a manifest line naming no file: reported, not fatal


def absolute(p) -> Path:
    # absolute without resolving symlinks: a linked folder keeps its name in the output structure
    return Path(os.path.abspath(p))


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _rel_below(path: Path, root: Path) -> PurePath:
    try:
        return path.relative_to(root)
    except ValueError:
        return PurePath(path.name)


def _glob_root(pattern: str) -> Path:
    """The part of a pattern before its first wildcard: the root of the output structure."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path) -> list[Path]:
    """Files below a folder, sorted; hidden files and folders (.git, temporary files) left out."""
    found = []
    for d, dirs, names in os.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [Path(d) / n for n in names if not n.startswith(".")]
    return sorted(found)


def _expand(arg: str, base: Path, exclude: Path | None, manifest: Path | None) -> list[Source]:
    """Files named by one argument or manifest line (`base`: what relative names are relative to)."""
    where = f"{arg!r} in {manifest}" if manifest else repr(arg)
    p = Path(arg).expanduser()
    if glob.has_magic(arg):
        # wildcards in `base` itself are escaped: only the argument's own are a pattern
        pattern = str(p) if p.is_absolute() else os.path.join(glob.escape(str(base)), str(p))
        root = absolute(_glob_root(str(p)) if p.is_absolute() else base / _glob_root(str(p)))
        matches = sorted(absolute(m) for m in glob.glob(pattern, recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() != ".json" and not _inside(m, exclude)]
        if not files:
            raise InputError(f"pattern {where} matches no file; check it, and quote it so that the shell "
                             f"does not expand it (rawdenoise batch 'shots/**/*.dng' ...)")
        return [Source(f, _rel_below(f, root)) for f in files]
    full = absolute(p if p.is_absolute() else base / p)
    if full.is_dir():
        files = [f for f in _walk(full) if f.suffix.lower() in RAW_SUFFIXES and not _inside(f, exclude)]
        if not files:
            raise InputError(f"folder {where} holds no RAW file ({', '.join(sorted(RAW_SUFFIXES))}); "
                             f"name the files or use a pattern")
        return [Source(f, f.relative_to(full)) for f in files]
    if full.suffix.lower() in MANIFEST_SUFFIXES:
        if manifest is not None:
            raise InputError(f"manifest {manifest} names another manifest {arg!r}; manifests do not nest, "
                             f"list its files instead")
        return _read_manifest(full, exclude)
    if manifest is not None:
        # a manifest entry keeps its path relative to the manifest (a camera team's list of shots/day/x.dng)
        return [Source(full, _rel_below(full, absolute(base)), missing=not full.is_file())]
    if not full.is_file():
        raise InputError(f"input {arg!r} is not a file, a folder, a glob pattern or a manifest (.txt); "
                         f"check the path")
    return [Source(full, PurePath(full.name))]


def _read_manifest(path: Path, exclude: Path | None) -> list[Source]:
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"manifest {path} cannot be read as text ({e}); it should list one path per line") from None
    out: list[Source] = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out += _expand(entry, path.parent, exclude, manifest=path)
    if not out:
        raise InputError(f"manifest {path} lists no file; write one path per line")
    return out


def collect_inputs(inputs, *, exclude=None) -> list[Source]:
    """Expand patterns, folders, files and manifests into files, each once, in the order given."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    exclude = absolute(exclude) if exclude is not None else None
    seen: set[str] = set()
    found: list[Source] = []
    for arg in inputs:
        for s in _expand(os.fspath(arg), Path.cwd(), exclude, manifest=None):
            key = os.path.normcase(os.path.realpath(s.path))
            if key not in seen:
                seen.add(key)
                found.append(s)
    if not found:
        raise InputError("no input files given; pass files, folders, glob patterns or a manifest")
    return found


# ---- plan ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    index: int
    input: Path
    output: Path
    status: str | None = None       # None: to do; "skipped"/"error" decided on the driver
    error: str | None = None


def output_files(output: Path) -> list[Path]:
    """Every file an output consists of (an .npy has its JSON sidecar)."""
    return [output, output.with_suffix(".json")] if output.suffix.lower() == ".npy" else [output]


def _input_files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".json")] if path.suffix.lower() == ".npy" else [path]


def plan(sources: Sequence[Source], out_dir: Path, fmt: str, *, overwrite: bool,
         reserved: Iterable[Path] = ()) -> list[Task]:
    """One task per input with its output path; refuses outputs that collide or replace an input."""
    if fmt not in OUTPUT_SUFFIXES:
        raise InputError(f"format {fmt!r} is not one of {', '.join(OUTPUT_SUFFIXES)}")
    suffix = OUTPUT_SUFFIXES[fmt]
    key = lambda p: os.path.normcase(os.path.realpath(p))  # noqa: E731
    inputs = {key(f): s for s in sources for f in _input_files(s.path)}
    owner: dict[str, Source | str] = {key(r): "the report" for r in reserved}
    tasks = []
    for i, s in enumerate(sources):
        out = out_dir / s.rel.parent / (s.rel.stem + suffix)
        for f in output_files(out):
            k = key(f)
            if k in inputs:
                raise InputError(f"the output of {s.path} would be {f}, which is an input; inputs are never "
                                 f"overwritten: choose another output folder")
            if k in owner:
                other = owner[k]
                what = other if isinstance(other, str) else str(other.path)
                raise InputError(f"{s.path} and {what} would both write {f}; give them different names, or pass "
                                 f"their common folder (or a quoted pattern) so that the output keeps their "
                                 f"subfolders")
            owner[k] = s
        t = Task(i, s.path, out)
        if s.missing:
            t.status, t.error = "error", f"{s.path} (named by a line of the manifest) does not exist"
        elif not overwrite and all(f.exists() for f in output_files(out)):
            t.status = "skipped"
        tasks.append(t)
    return tasks
