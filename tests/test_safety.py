"""Weight files are data: loading one never runs code from it."""

import os
import pickle

import pytest

torch = pytest.importorskip("torch")

from rawdenoise import Denoiser  # noqa: E402
from rawdenoise.errors import UnsafeFileError  # noqa: E402


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pt_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "rawdenoise.pt", "state_dict": {"x": Payload(marker)}}, evil)
    with pytest.raises(UnsafeFileError, match="nothing from it was executed"):
        Denoiser.load(evil)
    assert not marker.exists()
    # the payload is real: a plain unpickler would have run it
    import zipfile

    with zipfile.ZipFile(evil) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


def test_legacy_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    evil = tmp_path / "evil2.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Payload(marker)}, f)
    with pytest.raises(UnsafeFileError):
        Denoiser.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("content", [os.urandom(1000), b"\x80\x02" + os.urandom(500), b"PK\x03\x04" + os.urandom(300),
                                     b"\x80\x04\x95" + os.urandom(40)])
def test_garbage_is_called_corrupt_not_unsafe(tmp_path, content):
    from rawdenoise.errors import ModelFileError

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        Denoiser.load(garbage)
    assert not isinstance(info.value, UnsafeFileError) and "corrupt" in str(info.value)


def test_unsafe_names_the_global(tmp_path):
    evil = tmp_path / "evil3.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Payload(tmp_path / "x")}, f, protocol=4)
    with pytest.raises(UnsafeFileError, match=r"names (posix|os|nt)\.system"):
        Denoiser.load(evil)
