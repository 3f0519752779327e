"""dnnlib network pickles (NVIDIA Noise2Noise release format): the weights load, the pickled
`build_module_src` and any foreign global are never executed."""

import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from converters.tfweights import read_dnnlib_pickle
from rawdenoise.errors import UnsafeFileError

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT.parent / "shared" / "compat" / "n2n_nvidia_tf_variables.txt"


def n2n_variables(rng):
    if not COMPAT.is_file():
        pytest.skip(f"compat list {COMPAT} not present")
    out = []
    for line in COMPAT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            out.append((name, (rng.standard_normal(tuple(int(d) for d in shape.split("x"))) * 0.05).astype(np.float32)))
    return out


def dnnlib_pickle(state: dict, protocol: int = 4) -> bytes:
    """Pickle `state` as a dnnlib.tflib.network.Network; the fake module exists only meanwhile."""
    names = ["dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"]
    mods = {n: types.ModuleType(n) for n in names}

    class Network:
        def __getstate__(self):
            return state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    mods["dnnlib.tflib.network"].Network = Network
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(mods)
    try:
        return pickle.dumps(Network(), protocol=protocol)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def state_for(variables, src="def autoencoder(x, **kw):\n    return x\n"):
    return {"version": 2, "name": "autoencoder", "static_kwargs": {}, "build_module_src": src,
            "build_func_name": "autoencoder", "variables": variables}


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_variables_load_and_convert(tmp_path, rng, protocol):
    pytest.importorskip("torch")
    variables = n2n_variables(rng)
    path = tmp_path / "network_final.pickle"
    path.write_bytes(dnnlib_pickle(state_for(variables), protocol))
    got, info = read_dnnlib_pickle(path)
    assert list(got) == [n for n, _ in variables]
    assert info["build_func_name"] == "autoencoder"
    for n, v in variables:
        np.testing.assert_array_equal(got[n], v)

    from converters.tf2torch import main
    from rawdenoise import zoo

    assert main([str(path), "--arch", "n2n", "-o", str(tmp_path / "n2n.pt")]) == 0
    module, spec = zoo.load(tmp_path / "n2n.pt")
    sd = module.state_dict()
    ref = dict(variables)
    # HWIO -> OIHW, checked with an explicit per-element loop on one kernel
    w = ref["dec_conv1a/weight"]
    t = sd["dec_conv1a.weight"].numpy()
    for o in range(0, w.shape[3], 7):
        for i in range(0, w.shape[2], 11):
            np.testing.assert_array_equal(t[o, i], w[:, :, i, o])
    np.testing.assert_array_equal(sd["enc_conv0.bias"].numpy(), ref["enc_conv0/bias"])
    assert spec.origin["framework"] == "tf" and spec.origin["format"] == "dnnlib"
    assert (spec.layout, spec.offset) == ("rgb", -0.5)


def test_build_module_src_is_never_executed(tmp_path, rng):
    marker = tmp_path / "executed"
    src = f"open({str(marker)!r}, 'w').write('x')\nimport os\nos.system('touch {marker}')\n"
    path = tmp_path / "net.pkl"
    path.write_bytes(dnnlib_pickle(state_for([("enc_conv0/bias", np.ones(48, np.float32))], src)))
    got, _ = read_dnnlib_pickle(path)
    assert list(got) == ["enc_conv0/bias"]
    assert not marker.exists()
    assert "dnnlib" not in sys.modules


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_foreign_global_is_refused_before_running(tmp_path):
    marker = tmp_path / "executed"
    state = state_for([("enc_conv0/bias", np.ones(48, np.float32))])
    state["static_kwargs"] = {"x": _System(f"touch {marker}")}
    path = tmp_path / "evil.pkl"
    path.write_bytes(dnnlib_pickle(state))
    with pytest.raises(UnsafeFileError, match=r"refused.*(posix|os)\.system"):
        read_dnnlib_pickle(path)
    assert not marker.exists()


def test_other_classes_under_dnnlib_are_refused(tmp_path):
    payload = pickle.dumps(types.SimpleNamespace(a=1), protocol=4)
    (tmp_path / "ns.pkl").write_bytes(payload)
    with pytest.raises(UnsafeFileError):
        read_dnnlib_pickle(tmp_path / "ns.pkl")


def test_autodetected_without_tensorflow(tmp_path, rng):
    pytest.importorskip("torch")
    path = tmp_path / "network_final.pickle"
    path.write_bytes(dnnlib_pickle(state_for(n2n_variables(rng))))
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['h5py'] = None\n"
            "from converters.import_weights import main\n"
            f"sys.exit(main([{str(path)!r}, '--arch', 'n2n', '-o', {str(tmp_path / 'o.pt')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "from tf (dnnlib)" in r.stdout
