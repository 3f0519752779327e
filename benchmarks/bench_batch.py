"""`denoise_files`: frames per second in this process and on Ray with 1 and 2 actors, and what Ray
costs per frame.

Each case is one whole job (`overwrite=True`, so every round redoes every file). extra_info holds
`fps` (files / wall time of the job, model loading in the actors included) and `steady_fps`
(from the first files to finish to the last: the rate once a worker is up). The overhead
cases run an identity network on tiny frames, where denoising costs next to nothing: the
difference in seconds per frame is what the Ray path adds to each file (task, object store,
status row), and `files_per_task=8` shares one task's cost among 8 files. Ray runs on a local
instance with the machine's CPUs (`ray.init(num_cpus=...)`)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from benchmarks.frames import LEVELS, frame, model_paths
from rawdenoise.batch import denoise_files

# one runtime thread per worker everywhere (an actor's default), so the loop is not slowed or sped up
# by a thread count of its own
EXECUTORS = {"loop": {"threads": 1}, "ray-1-actor": {"actors": 1}, "ray-2-actors": {"actors": 2},
             "ray-1-actor-8-files-per-task": {"actors": 1, "files_per_task": 8}}
THROUGHPUT_FRAMES = 12
OVERHEAD_FRAMES = 48


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rawdenoise[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _npy_frames(folder, data: list[np.ndarray]):
    folder.mkdir(parents=True, exist_ok=True)
    side = json.dumps({k: v for k, v in LEVELS.items()})
    for i, x in enumerate(data):
        np.save(folder / f"f{i:03d}.npy", x)
        (folder / f"f{i:03d}.json").write_text(side)
    return folder


def _job(benchmark, executor, src, out, model, **options):
    finished = []
    kw = dict(EXECUTORS[executor])
    if "actors" in kw:
        kw["ray_address"] = "local"   # the instance the fixture started is reused

    def go():
        finished.clear()
        t0 = time.perf_counter()
        report = denoise_files(src, out, model=model, overwrite=True, on_file=lambda row: finished.append(
            time.perf_counter()), **kw, **options)
        assert report.failed == 0, report.failures
        return time.perf_counter() - t0

    seconds = benchmark.pedantic(go, rounds=2, warmup_rounds=0)
    n = len(finished)
    # files after the first batch to arrive, over the time since it arrived (rows of one task arrive together)
    later = sum(t > finished[0] + 1e-3 for t in finished)
    steady = later / (finished[-1] - finished[0]) if later else float("nan")
    benchmark.extra_info.update(frames=n, fps=round(n / seconds, 3), steady_fps=round(steady, 3),
                                steady_seconds_per_frame=round(1 / steady, 4) if steady == steady else None)


@pytest.mark.parametrize("executor", ["loop", "ray-1-actor", "ray-2-actors"])
def test_throughput_default_model(benchmark, executor, local_ray, tmp_path_factory):
    """The shipped model (ONNX Runtime, CPU) on 0.8 MP frames (768 x 1024 crops of the 2 MP frame)."""
    src = tmp_path_factory.getbasetemp() / "bench_batch_frames"
    if not src.exists():
        full = frame("2MP")
        _npy_frames(src, [np.ascontiguousarray(full[(i % 4) * 100:(i % 4) * 100 + 768, :1024])
                          for i in range(THROUGHPUT_FRAMES)])
    benchmark.group = "batch-throughput-0.8MP"
    _job(benchmark, executor, src, tmp_path_factory.mktemp(f"out-{executor}"), model_paths()["onnx"])


@pytest.fixture(scope="module")
def identity_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from converters.torch2onnx import export_artifact
    from rawdenoise import zoo

    module = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    folder = tmp_path_factory.mktemp("identity")
    zoo.save(module, folder / "identity.pt")
    export_artifact(folder / "identity.pt", folder / "identity.onnx")
    return folder / "identity.onnx"


@pytest.mark.parametrize("executor", ["loop", "ray-1-actor", "ray-1-actor-8-files-per-task"])
def test_per_frame_overhead(benchmark, executor, local_ray, identity_onnx, tmp_path_factory):
    """An identity network on 64 x 96 frames: the time per file is the pipeline's, not the network's."""
    src = tmp_path_factory.getbasetemp() / "bench_batch_tiny"
    if not src.exists():
        rng = np.random.default_rng(0)
        _npy_frames(src, [rng.integers(512, 16383, (64, 96)).astype(np.uint16) for _ in range(OVERHEAD_FRAMES)])
    benchmark.group = "batch-overhead-tiny-frames"
    _job(benchmark, executor, src, tmp_path_factory.mktemp(f"tiny-{executor}"), identity_onnx, tile=0)
