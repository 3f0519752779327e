"""Peak memory of Denoiser.run on a 50 MP uint16 frame, measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.frames import frame, model_paths

# the frame is made by the parent and loaded here: synthesising it would set the high-water mark
SCRIPT = r"""
import json, sys, tracemalloc
import numpy as np

def hwm_mb():
    # VmHWM belongs to this process image (ru_maxrss would carry the forking parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from benchmarks.frames import LEVELS
from rawdenoise import Denoiser
raw = np.load(sys.argv[2])
dn = Denoiser.load(sys.argv[1])
dn.run(raw[:1024, :1024], **LEVELS)  # load the runtime's kernels
base = hwm_mb()
tracemalloc.start()
dn.run(raw, **LEVELS)
_, peak_py = tracemalloc.get_traced_memory()
peak = hwm_mb()
print(json.dumps({"peak_rss_mb": peak, "rss_before_mb": base, "numpy_peak_mb": peak_py / 2**20,
                  "frame_mb": raw.nbytes / 2**20}))
"""


@pytest.mark.parametrize("model", ["onnx", "pt"])
def test_peak_memory_50mp(benchmark, model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mem_models")
    path = model_paths()[model]
    raw_path = workdir / "frame50.npy"
    if not raw_path.exists():
        np.save(raw_path, frame("50MP"))
    result = {}

    def go():
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(raw_path)], capture_output=True, text=True,
                           check=True)
        result.update(json.loads(r.stdout.strip().splitlines()[-1]))

    benchmark.group = "memory-50MP"
    benchmark.pedantic(go, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(result)
    print(f"\n50 MP {model}: {result}")
