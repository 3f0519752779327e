"""`rawdenoise batch`: denoise many RAW files into a folder, on this machine or on a Ray cluster.

    report = denoise_files("shots/**/*.dng", "denoised/", model="unet.onnx")                 # this process
    report = denoise_files(paths, "denoised/", model="unet.onnx", ray_address="auto", actors=8)

Both ways run the same code per file (`FrameWorker`) and give the same outputs and the same report.

Inputs: glob patterns (`**` recurses), folders (every file with a RAW suffix below them, see
`RAW_SUFFIXES`), files, and manifests (`.txt`: one input per line, `#` comments; relative lines are
relative to the manifest's folder). Files inside the output folder are never picked up by a folder
or a pattern.

Frame options (cfa, black/white levels, iso) apply to every file, as in `rawdenoise denoise`;
the layout options (width, height, dtype, byte_order, offset) only to headerless .raw/.bin dumps,
so one job can mix dumps with DNGs.

Output names keep the input's folder below its root (the folder given, the fixed part of a pattern,
the manifest's folder; a file named on its own has its name only), so `shots/day1/a.dng` and
`shots/day2/a.dng` from `shots/**/*.dng` become `OUT/day1/a.dng` and `OUT/day2/a.dng`. The name of
an output depends on nothing but its input and that root, so a re-run maps every file to the same
output; two inputs that would still share an output are refused before any work starts.

Idempotent and resumable: an output that exists is skipped unless `overwrite`; every output is
written to a temporary file beside it and renamed (`fileio.atomic_output`), so an output exists
whole or not at all, and a re-run after a crash does only what is missing. A file that cannot be
read, denoised or written gets status "error" with a one-line reason and the job goes on. A file
that kills its worker process (a crash in a decoder, out of memory) is tried `attempts` times,
counted in a marker file next to its output, then reported as an error; Ray's own retries alone
would try it forever. Temporary files and markers left by killed workers are removed at the end.

Storage: inputs, outputs and the model are opened by path on whichever node runs the file, so they
must be on storage every node sees at the same path (NFS, a cluster file system, a mounted bucket);
paths are made absolute on the driver. For an object store (s3://, gs://) without a mount, the
worker would download the input and upload the output instead of the rename; an object PUT is
atomic already, and "exists" becomes a HEAD request; that is not implemented here.

With --overwrite, a task that Ray runs again (its node was lost, or its result was) writes again
the files it had finished, with the same bytes and the same atomic rename; without it, they are
found written and reported done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .batch_inputs import Task, absolute, collect_inputs, output_files, plan
from .errors import InputError, RawDenoiseError, one_line

LAYOUT_KEYS = ("width", "height", "dtype", "byte_order", "offset")   # headerless dumps only
READ_KEYS = ("cfa", "black_level", "white_level", "iso") + LAYOUT_KEYS
REPORT_NAME = "report.json"
TEMP_SUFFIX = ".part"     # fileio.atomic_output's temporary files: .NAME.XXXX.part
MARKER_SUFFIX = ".try"    # attempt counters: .NAME.JOB.try


# ---- the work on one file ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobOptions:
    """Everything a worker needs, picklable; paths absolute (workers run in other folders)."""
    model: str = "default"
    runtime: str | None = None
    device: str | None = None
    tile: int | None = None
    overlap: int | None = None
    batch: int | None = None
    threads: int | None = None
    ensemble: int = 1
    iso: float | None = None
    profile: str | None = None
    read_options: dict = field(default_factory=dict)
    overwrite: bool = False
    attempts: int = 3
    job_id: str = ""


def read_frame(path: Path, read_options: dict):
    """read_raw with the frame options; layout options (width, ...) go to headerless dumps only."""
    from .rawio import HEADERLESS_SUFFIXES, read_raw

    opts = {k: v for k, v in read_options.items() if v is not None}
    if path.suffix.lower() not in HEADERLESS_SUFFIXES:
        opts = {k: v for k, v in opts.items() if k not in LAYOUT_KEYS}
    return read_raw(path, **opts)


class FrameWorker:
    """Loads the model once; then denoises one file per `process` call and reports, never raises,
    for a bad file. The in-process path calls it in a loop; on Ray each actor holds a RayFrameWorker."""

    def __init__(self, job: JobOptions):
        from .denoiser import Denoiser

        self.job = job
        self.dn = Denoiser.load(job.model, runtime=job.runtime, device=job.device, tile=job.tile,
                                overlap=job.overlap, batch=job.batch, threads=job.threads)
        self.profile = None
        if job.profile is not None:
            from .profile import NoiseProfile

            self.profile = NoiseProfile.load(job.profile)
        self.node = _node_id()

    def close(self) -> None:
        self.dn.close()

    def process(self, src: str | Path, dst: str | Path) -> dict[str, Any]:
        from .dng import write_output

        src, dst = Path(src), Path(dst)
        t0 = time.perf_counter()
        row = {"status": "done", "error": None, "node": self.node}
        if not self.job.overwrite and all(f.exists() for f in output_files(dst)):
            # missing when the job was planned: an earlier attempt of this task wrote it (its result was lost)
            return {**row, "seconds": 0.0}
        marker = dst.parent / f".{dst.name}.{self.job.job_id}{MARKER_SUFFIX}"
        tries = _count_attempt(marker)
        if tries > self.job.attempts:
            return {**row, "status": "error", "seconds": 0.0,
                    "error": f"not processed: it stopped the worker {tries - 1} times (a crash while reading or "
                             f"denoising it, or out of memory); check the file"}
        try:
            frame = read_frame(src, self.job.read_options)
            # an ISO given by the caller is explicit, as run(iso=...) is (a file's ISO is metadata)
            noise = self.profile.frame_noise(frame) if self.profile else None
            clean = self.dn.run(frame, iso=self.job.iso, noise=noise, ensemble=self.job.ensemble)
            write_output(dst, clean, like=frame, overwrite=self.job.overwrite)
        except RawDenoiseError as e:
            row.update(status="error", error=one_line(e))
        except MemoryError:
            row.update(status="error", error="out of memory while denoising it; use a smaller --tile or --batch")
        except Exception as e:  # a bug must not stop thousands of other files; it is reported as one
            row.update(status="error", error=f"internal error ({type(e).__name__}: {one_line(e)}); please report it")
        finally:
            marker.unlink(missing_ok=True)
        return {**row, "seconds": time.perf_counter() - t0}


def _count_attempt(marker: Path) -> int:
    """Attempts at one file so far in this job, this one included (a marker on the shared folder)."""
    try:
        tries = int(marker.read_text() or 0) + 1
    except (OSError, ValueError):
        tries = 1
    with contextlib.suppress(OSError):
        marker.write_text(str(tries))
    return tries


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return "local"


# ---- the report ----------------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """One dict per input, in input order: input, output, status (done/skipped/error), error, seconds, node."""
    files: list[dict[str, Any]]
    path: Path | None = None            # report.json written
    seconds: float = 0.0
    executor: str = "local"

    def count(self, status: str) -> int:
        return sum(f["status"] == status for f in self.files)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("error")

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "seconds": round(self.seconds, 3),
                "counts": {"files": len(self.files), "done": self.done, "skipped": self.skipped,
                           "failed": self.failed},
                "files": self.files}

    def write(self, path: Path) -> None:
        from .fileio import atomic_output

        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        self.path = path


# ---- running -------------------------------------------------------------------------------------------
def _run_local(job: JobOptions, todo: list[Task]) -> Iterator[dict]:
    worker = FrameWorker(job)
    try:
        for t in todo:
            yield {"index": t.index, **worker.process(t.input, t.output)}
    finally:
        worker.close()


def _sweep(tasks: Sequence[Task]) -> int:
    """Remove temporary files and attempt markers that killed workers left next to this job's outputs."""
    names: dict[Path, set[str]] = {}
    for t in tasks:
        for f in output_files(t.output):
            names.setdefault(f.parent, set()).add(f.name)
    removed = 0
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            n = entry.name
            if n.startswith(".") and n.endswith((TEMP_SUFFIX, MARKER_SUFFIX)) and \
                    n[1:].rsplit(".", 2)[0] in wanted:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def denoise_files(inputs, out_dir, *, model=None, format: str = "dng", runtime: str | None = None,
                  device: str | None = None, tile: int | None = None, overlap: int | None = None,
                  batch: int | None = None, threads: int | None = None, ensemble: int = 1,
                  iso: float | None = None, profile=None,
                  read_options: dict | None = None, overwrite: bool = False, progress: bool | None = False,
                  ray_address: str | None = None, actors: int = 1, cpus_per_actor: float = 1.0,
                  gpus_per_actor: float = 0.0, files_per_task: int = 1, attempts: int = 3,
                  runtime_env: dict | None = None,
                  report_path=None, on_file: Callable[[dict], None] | None = None) -> BatchReport:
    """Denoise every input file into `out_dir`; returns the report, also written to `out_dir/report.json`.

    `inputs`: a path, glob pattern, folder or manifest (.txt), or a list of them (see the module notes).
    Model options are those of `Denoiser.load` (and `run`: `ensemble`, `iso`; `threads` defaults to
    the runtime's in this process and to `cpus_per_actor` in a Ray actor); `profile` is a noise
    profile file; `read_options` are `read_raw`'s (cfa, black_level, white_level, and width, height,
    dtype, byte_order, offset for headerless dumps). `ray_address=None` runs in this process; else
    "auto", "HOST:6379", "ray://HOST:10001" or "local" (a new Ray instance on this machine), with
    `actors` workers of `cpus_per_actor`/`gpus_per_actor` each, each loading the model once, given
    `files_per_task` files per Ray task (more: less overhead per file, coarser retries and balance);
    a file that kills its worker `attempts` times is reported as an error. `runtime_env` goes to
    `ray.init` when this call connects (e.g. {"py_modules": [...]} where the nodes lack rawdenoise).
    `on_file(row)` is called on the driver as each file finishes (rows as in `BatchReport.files`).
    """
    from .ensemble import orientations

    t_start = time.perf_counter()
    orientations(ensemble)   # a bad value fails before any work
    for name, v, lo in (("actors", actors, 1), ("attempts", attempts, 1), ("files_per_task", files_per_task, 1)):
        if not isinstance(v, int) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if cpus_per_actor < 0 or gpus_per_actor < 0:
        raise InputError(f"cpus/gpus per actor must be >= 0, got {cpus_per_actor} / {gpus_per_actor}")
    out_dir = absolute(out_dir)
    if out_dir.is_file():
        raise InputError(f"output folder {out_dir} is a file; -o names a folder for a batch")
    unknown = set(read_options or {}) - set(READ_KEYS)
    if unknown:
        raise InputError(f"unknown read option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(READ_KEYS)}")
    model_path = "default" if model in (None, "default") else str(absolute(model))
    if model_path != "default" and not Path(model_path).is_file():
        raise InputError(f"model file {model} does not exist (on a cluster it must be on storage every node sees)")
    if profile is not None and not absolute(profile).is_file():
        raise InputError(f"noise profile {profile} does not exist")
    report_file = absolute(report_path) if report_path is not None else out_dir / REPORT_NAME

    tasks = plan(collect_inputs(inputs, exclude=out_dir), out_dir, format, overwrite=overwrite,
                 reserved=[report_file])
    todo = [t for t in tasks if t.status is None]
    for folder in [out_dir, *sorted({t.output.parent for t in todo})]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create output folder {folder} ({e.strerror}); check the path and its "
                             f"permissions") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out_dir} is not writable; choose another one or fix its permissions")

    on_ray = ray_address is not None
    if threads is None and on_ray and cpus_per_actor >= 1:
        threads = round(cpus_per_actor)   # an actor's threads stay within the CPUs Ray gave it
    if on_ray and gpus_per_actor > 0 and device is None:
        device = "cuda"   # Ray gives each actor its GPU(s) through CUDA_VISIBLE_DEVICES
    job = JobOptions(model=model_path, runtime=runtime, device=device, tile=tile, overlap=overlap, batch=batch,
                     threads=threads, ensemble=ensemble, iso=iso,
                     profile=str(absolute(profile)) if profile is not None else None,
                     read_options={**(read_options or {}), **({"iso": iso} if iso is not None else {})},
                     overwrite=overwrite, attempts=attempts, job_id=uuid.uuid4().hex[:12])

    rows: dict[int, dict] = {}
    files = [{"input": str(t.input), "output": str(t.output), "status": t.status, "error": t.error,
              "seconds": None, "node": None} for t in tasks]
    report = BatchReport(files, executor=f"ray {ray_address} x{actors}" if on_ray else "local")
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="batch", unit="file", file=sys.stderr,
               disable=None if progress is None else not progress)
    bar.update(len(tasks) - len(todo))
    for t in tasks:
        if t.status == "error" and on_file is not None:
            on_file(files[t.index])
    stopped: BaseException | None = None
    try:
        if todo:
            from .batch_ray import run_ray

            stream = run_ray(job, todo, address=ray_address, actors=actors, cpus_per_actor=cpus_per_actor,
                              gpus_per_actor=gpus_per_actor, files_per_task=files_per_task,
                              runtime_env=runtime_env) if on_ray \
                else _run_local(job, todo)
            with contextlib.closing(stream):     # workers are gone before the sweep below
                for row in stream:
                    i = row.pop("index")
                    if i in rows:
                        continue    # a recomputed block repeats its row
                    rows[i] = row
                    files[i].update(row)
                    bar.update(1)
                    if on_file is not None:
                        on_file(files[i])
    except BaseException as e:
        stopped = e
        raise
    finally:
        bar.close()
        for t in todo:
            if t.index not in rows:
                files[t.index].update(status="error", error=(
                    f"not processed: the job stopped ({one_line(stopped)})" if stopped is not None else
                    "no result came back from Ray for it (its task failed; see the Ray logs); run the job again"))
                if stopped is None and on_file is not None:
                    on_file(files[t.index])
        _sweep(tasks)
        report.seconds = time.perf_counter() - t_start
        with contextlib.suppress(OSError, RawDenoiseError):
            report.write(report_file)
    return report


# ---- command line --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import OUTPUT_FORMATS, add_frame_options, add_model_options

    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="files, folders, quoted glob patterns ('shots/**/*.dng') or manifests (.txt, one path a line)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                   help="output folder (created if missing); outputs keep the inputs' subfolders")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="dng", help="output format (default dng)")
    add_model_options(p)       # (--device defaults to cuda with --gpus-per-actor)
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of the runtime (default: its own here, --cpus-per-actor on Ray)")
    p.add_argument("--profile", type=Path, metavar="JSON", help="camera noise profile (python -m tools.noise_profile)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose output exists (default: skip them)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    r = p.add_argument_group("Ray", "run on a Ray cluster (pip install 'rawdenoise[ray]'); files, outputs and "
                                    "the model must be on storage every node sees")
    r.add_argument("--ray", metavar="ADDRESS", dest="ray_address",
                   help="auto (the cluster `ray start` joined), HOST:6379, ray://HOST:10001, or local "
                        "(a new Ray instance on this machine); default: run in this process")
    r.add_argument("--actors", type=int, default=1, metavar="N",
                   help="workers, each loading the model once (default 1)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N", help="CPUs per worker (default 1)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="N", help="GPUs per worker (default 0)")
    r.add_argument("--files-per-task", type=int, default=1, metavar="N",
                   help="files per Ray task: raise it (e.g. 8) when frames are small and the per-task "
                        "overhead shows (default 1)")
    r.add_argument("--attempts", type=int, default=3, metavar="N",
                   help="times a file may kill its worker before it is reported as an error (default 3)")
    p.add_argument("--report", type=Path, metavar="JSON", help="report file (default OUT/report.json)")
    add_frame_options(p)


def run(args) -> int:
    from tqdm import tqdm

    from .cli import _read_options

    def show(row):
        if row["status"] == "error":
            tqdm.write(f"rawdenoise: error: {row['input']}: {row['error']}", file=sys.stderr)

    report = denoise_files(
        args.inputs, args.output, model=args.model, format=args.format, runtime=args.runtime, device=args.device,
        tile=args.tile, overlap=args.overlap, batch=args.batch, threads=args.threads, ensemble=args.ensemble,
        iso=args.iso,
        profile=args.profile, read_options={k: v for k, v in _read_options(args).items() if k != "iso"},
        overwrite=args.overwrite, progress=args.progress, ray_address=args.ray_address, actors=args.actors,
        cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
        files_per_task=args.files_per_task, attempts=args.attempts,
        report_path=args.report, on_file=show)
    summary = (f"{report.done} done, {report.skipped} skipped, {report.failed} failed of {len(report.files)} "
               f"in {report.seconds:.1f} s; report: {report.path}")
    if report.failed:
        print(f"rawdenoise: error: {report.failed} of {len(report.files)} files failed ({summary})", file=sys.stderr)
        return 1
    print(f"rawdenoise batch: {summary}", file=sys.stderr)
    return 0
