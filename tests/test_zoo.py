import pytest

torch = pytest.importorskip("torch")

from rawdenoise import zoo  # noqa: E402
from rawdenoise.errors import InputError  # noqa: E402


def test_registry():
    assert "unet" in zoo.names()
    with pytest.raises(InputError, match="unknown architecture"):
        zoo.create("unte")
    with pytest.raises(InputError, match="bad arguments"):
        zoo.create("unet", bogus=1)


def test_artifact_round_trip_loads_with_weights_only(tmp_path):
    m = zoo.create("unet", width=4, depth=2)
    spec = zoo.save(m, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["arch"] == "unet" and payload["arch_kwargs"] == {"width": 4, "depth": 2}
    m2, spec2 = zoo.load(tmp_path / "m.pt")
    assert spec2 == spec
    x = torch.rand(1, 4, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_receptive_radius_matches_a_hand_count():
    # depth 1, output block [b, b+1] (b even), walking back: decoder convs -> [b-2, b+3];
    # 2x2/2 transposed conv -> low-res [b/2-1, b/2+1]; bottom convs -> [b/2-3, b/2+3];
    # pool -> [b-6, b+7]; encoder convs -> [b-8, b+9]: radius 8 (the skip path needs only 4)
    m = zoo.create("unet", width=4, depth=1)
    r = zoo.measure_receptive_radius(m, zoo.default_spec("unet", width=4, depth=1))
    assert r == 8


def test_save_needs_a_zoo_module(tmp_path):
    with pytest.raises(InputError, match="zoo.create"):
        zoo.save(torch.nn.Conv2d(4, 4, 3), tmp_path / "x.pt")
