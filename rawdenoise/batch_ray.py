"""The Ray Data side of a batch job: an actor pool of FrameWorkers fed with file paths.

Each actor loads the Denoiser once; the dataset holds paths, never frames, so bytes never travel
through the object store; the workers read and write the shared folder themselves.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .batch import FrameWorker, JobOptions, _node_id
from .batch_inputs import Task
from .errors import InputError, RawDenoiseError, missing, one_line

class RayFrameWorker(FrameWorker):
    """The Ray Data callable: one per actor, called with batches of rows (index, input, output).

    A model that cannot be loaded is not raised from the constructor (Ray would restart the actor
    and print its traceback); each row then carries the error as `fatal`, and the driver stops
    the job with that one line.
    """

    def __init__(self, job: JobOptions):
        self.fatal = None
        try:
            super().__init__(job)
        except RawDenoiseError as e:
            self.fatal = f"{type(e).__name__}: {one_line(e)}"
            self.node = _node_id()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        if self.fatal is not None:
            rows = [{"status": "error", "error": self.fatal, "seconds": 0.0, "node": self.node}] * len(batch["index"])
        else:
            rows = [self.process(src, dst) for src, dst in zip(batch["input"], batch["output"])]
        return {"index": np.asarray(batch["index"]),
                "status": np.array([r["status"] for r in rows]),
                "error": np.array([r["error"] or "" for r in rows]),
                "seconds": np.array([r["seconds"] for r in rows], np.float64),
                "node": np.array([r["node"] for r in rows]),
                "fatal": np.full(len(rows), self.fatal is not None)}




def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise missing("ray", "ray", "running a batch on Ray (--ray)") from None
    return ray


@contextlib.contextmanager
def _ray_session(ray, address: str, runtime_env: dict | None):
    """Connect to the cluster unless this process is connected already; disconnect only what we connected."""
    if ray.is_initialized():
        yield
        return
    local = address == "local"
    try:
        ray.init(address=None if local else address, runtime_env=runtime_env, logging_level="ERROR",
                 log_to_driver=False, **({"include_dashboard": False} if local else {}))
    except ConnectionError as e:
        raise InputError(f"no Ray cluster at --ray {address} ({one_line(e)}); start one (ray start --head), give "
                         f"its address (auto, HOST:6379, ray://HOST:10001), or use --ray local for one on this "
                         f"machine, or drop --ray to run in this process") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet(logger_name: str, level: int):
    """Keep a library's progress chatter out of the command line's stderr (errors still show)."""
    import logging

    log = logging.getLogger(logger_name)
    saved = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved)


@contextlib.contextmanager
def _data_context(**values):
    """Set DataContext fields for this job and put the caller's values back afterwards."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in values}
    for k, v in values.items():
        setattr(ctx, k, v)
    try:
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def run_ray(job: JobOptions, todo: list[Task], *, address: str, actors: int, cpus_per_actor: float,
             gpus_per_actor: float, files_per_task: int, runtime_env: dict | None) -> Iterator[dict]:
    ray = import_ray()
    from ray.data import ActorPoolStrategy

    import logging

    with _ray_session(ray, address, runtime_env), _quiet("ray.data", logging.ERROR), \
            _data_context(enable_progress_bars=False,       # the job has one bar, on the driver
                          enable_auto_log_stats=False,
                          # a task that fails outside the per-file handling must not stop the job:
                          # its files get no row and are reported as errors, never dropped silently
                          max_errored_blocks=-1):
        # rows of paths, `files_per_task` per block and per task: a retried task repeats that many
        # files at most, and those it had finished are found written and not redone. Bytes never
        # travel through the object store; the worker reads and writes the shared folder itself
        items = [{"index": t.index, "input": str(t.input), "output": str(t.output)} for t in todo]
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // files_per_task))
        ds = ds.map_batches(RayFrameWorker, fn_constructor_args=(job,), batch_size=files_per_task,
                            batch_format="numpy",
                            compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                            num_gpus=gpus_per_actor or None)
        try:
            for row in ds.iter_rows():
                if row["fatal"]:
                    raise _worker_error(str(row["error"]), str(row["node"]))
                yield {"index": int(row["index"]), "status": str(row["status"]), "error": str(row["error"]) or None,
                       "seconds": float(row["seconds"]), "node": str(row["node"])}
        except RawDenoiseError:
            raise
        except Exception as e:
            # the cluster, not a file, failed (lost connection, every node gone, no progress for
            # DataContext.execution_no_progress_timeout_s): one line, and the report says what was done
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            missing_module = next((line for line in lines if "No module named" in line), None)
            why = f"{missing_module}: install rawdenoise and its frameworks on every node (or pass runtime_env)" \
                if missing_module else lines[0]
            raise RawDenoiseError(f"the Ray job stopped: {type(e).__name__}: {why}; outputs written so far are "
                                  f"complete, run the same command again to finish the rest") from None


def _worker_error(text: str, node: str) -> RawDenoiseError:
    """The error a worker could not start with (a model that does not load), as the SDK's exception type."""
    from . import errors  # noqa: PLC0415

    name, _, message = text.partition(": ")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, RawDenoiseError)):
        cls, message = RawDenoiseError, text
    return cls(f"{message} (on Ray node {node[:12]})")
