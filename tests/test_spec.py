import json

import pytest

from rawdenoise import KSigma, ModelSpec
from rawdenoise.errors import InputError, ModelFileError


def test_json_round_trip():
    s = ModelSpec(name="x", ksigma=KSigma((1e-3, 2e-2), (1e-7, 1e-4, 0.1), 1600, 959), scale=256.0,
                  origin={"framework": "torch"}, notes={"trained": "yes"}, receptive_radius=40)
    assert ModelSpec.from_json(s.to_json()) == s
    assert json.loads(s.to_json())["ksigma"]["anchor_iso"] == 1600


@pytest.mark.parametrize("kw,msg", [
    (dict(layout="rgbw"), "layout"), (dict(channel_order="RGBX"), "Bayer order"), (dict(output="foo"), "output"),
    (dict(tile=100, multiple=16), "multiple"), (dict(precision="int4"), "precision"), (dict(scale=0), "scale"),
])
def test_invalid_specs(kw, msg):
    with pytest.raises(InputError, match=msg):
        ModelSpec(**kw)


def test_unknown_fields_and_newer_versions_are_refused():
    d = ModelSpec().to_dict()
    with pytest.raises(ModelFileError, match="unknown fields"):
        ModelSpec.from_dict({**d, "bogus": 1})
    with pytest.raises(ModelFileError, match="newer"):
        ModelSpec.from_dict({**d, "version": 99})
    with pytest.raises(ModelFileError, match="JSON"):
        ModelSpec.from_json("{")


def test_ksigma_needs_iso_or_noise():
    ks = KSigma((1.0, 0.0), (0.0, 0.0, 1.0), 1600, 1.0)
    with pytest.raises(InputError, match="ISO"):
        ks.gain_offset()
    g, o = ks.gain_offset(iso=1600)
    assert g == pytest.approx(1.0) and o == pytest.approx(0.0)
