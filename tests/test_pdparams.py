"""The restricted `.pdparams` reader: real paddle.save files, hand-built pickles, split big
parameters, and malicious pickles that must be refused before anything runs."""

import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from conftest import has
from converters.pdparams import read_pdparams
from rawdenoise.errors import ModelFileError, UnsafeFileError

SCRIPTS = Path(__file__).parent / "framework_scripts"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.paddle
@pytest.mark.skipif(not has("paddle"), reason="paddlepaddle is not installed")
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_reads_real_paddle_save_files(tmp_path, protocol):
    out, ref = tmp_path / "w.pdparams", tmp_path / "ref.npz"
    subprocess.run([sys.executable, str(SCRIPTS / "paddle_save_params.py"), str(out), str(protocol), str(ref)],
                   check=True, capture_output=True, timeout=120)
    got = read_pdparams(out)
    want = np.load(ref)
    assert list(got) == list(want.files)  # file order, bookkeeping key dropped
    for k in want.files:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k])
    assert got["4.weight"].shape == (8, 5)  # Paddle Linear is [in, out]
    assert "1._mean" in got and "1._variance" in got


def _params(rng):
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.standard_normal(4).astype(np.float32),
            "lin.weight": rng.standard_normal((6, 2)).astype(np.float64),
            "steps": np.array(7, dtype=np.int64)}


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("container", [dict, OrderedDict])
def test_hand_built_pickles(tmp_path, rng, protocol, container):
    params = _params(rng)
    obj = container(params)
    obj["StructuredToParameterName@@"] = {k: f"p_{i}" for i, k in enumerate(params)}
    path = tmp_path / "h.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = read_pdparams(path)
    assert list(got) == list(params)
    for k, v in params.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("protocol", [2, 3])
def test_split_big_parameters_are_joined(tmp_path, rng, protocol):
    big = rng.standard_normal((5, 4, 3)).astype(np.float32)
    flat = big.reshape(-1)
    obj = {"small": np.ones(3, np.float32),
           "big@@.0": flat[:25], "big@@.1": flat[25:50], "big@@.2": flat[50:],
           "UnpackBigParamInfor@@": {"big": {"OriginShape": big.shape, "slices": ["big@@.0", "big@@.1", "big@@.2"]}},
           "StructuredToParameterName@@": {"small": "s", "big": "b"}}
    path = tmp_path / "split.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = read_pdparams(path)
    assert sorted(got) == ["big", "small"]
    np.testing.assert_array_equal(got["big"], big)


def test_split_parameter_with_missing_part_is_an_error(tmp_path):
    obj = {"big@@.0": np.zeros(4, np.float32),
           "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 4), "slices": ["big@@.0", "big@@.1"]}}}
    path = tmp_path / "trunc.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ModelFileError, match=r"big@@\.1"):
        read_pdparams(path)


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, rng, payload, protocol):
    marker = tmp_path / "pwned"
    obj = dict(_params(rng))
    obj["conv.bias"] = payload(str(marker))
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafeFileError, match="refused"):
        read_pdparams(path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.pdparams"
    path.write_bytes(pickle.dumps({"w": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises((UnsafeFileError, ModelFileError)):
        read_pdparams(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pdparams"
    path.write_bytes(pickle.dumps([np.zeros(2)], protocol=4))
    with pytest.raises(ModelFileError, match="not a Paddle state dict"):
        read_pdparams(path)
    (tmp_path / "junk.pdparams").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelFileError):
        read_pdparams(tmp_path / "junk.pdparams")


def test_reader_works_without_paddle(tmp_path, rng):
    path = tmp_path / "np.pdparams"
    path.write_bytes(pickle.dumps(_params(rng), protocol=2))
    code = ("import sys; sys.modules['paddle'] = None\n"
            "from converters.pdparams import read_pdparams\n"
            f"d = read_pdparams({str(path)!r}); assert 'paddle' not in [m for m in sys.modules if sys.modules[m]]\n"
            "print(sorted(d))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "conv.weight" in r.stdout


def test_paddle2torch_cli_errors_are_one_line(tmp_path, capsys):
    from converters.paddle2torch import main

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pdparams").write_bytes(pickle.dumps({"w": _CreatesFile(str(marker))}, protocol=2))
    assert main([str(tmp_path / "evil.pdparams"), "--arch", "n2n_paddle", "-o", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and ".open" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
