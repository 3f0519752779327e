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


def test_layout_defaults_and_version_2_fields_round_trip():
    assert (ModelSpec().channel_order, ModelSpec().in_channels) == ("RGGB", 4)
    assert (ModelSpec(layout="mosaic", multiple=2).in_channels, ModelSpec(layout="rgb").channel_order) == (1, "RGB")
    gray = ModelSpec(layout="rgb", in_channels=1)
    assert gray.channel_order == "L" and gray.out_channels == 1
    s = ModelSpec(layout="mosaic", multiple=8, receptive_radius=None, tile=64, inputs=[
        {"name": "z", "kind": "gaussian", "channels": 12, "stride": 4, "seed": 3},
        {"name": "iso", "kind": "constant", "stride": None, "channels": 2, "value": [1.0, 2.0]}])
    back = ModelSpec.from_json(s.to_json())
    assert back == s and back.unbounded and back.inputs[1].shape(3, 8, 8) == (3, 2)
    assert back.inputs[0].shape(2, 64, 32) == (2, 12, 16, 8)
    # an input concatenated to the image counts in in_channels, not in the image's channels
    cat = ModelSpec(layout="rgb", inputs=[{"name": "noise", "kind": "gaussian", "channels": 45, "concat": True}])
    assert (cat.in_channels, cat.data_channels, cat.out_channels, cat.channel_order) == (48, 3, 3, "RGB")
    assert cat.separate_inputs == ()
    # a version-1 manifest (no new fields) still reads
    old = {k: v for k, v in ModelSpec().to_dict().items() if k != "inputs"}
    assert ModelSpec.from_dict({**old, "version": 1}) == ModelSpec()


@pytest.mark.parametrize("kw,msg", [
    (dict(layout="mosaic", multiple=3, tile=0), "even"),
    (dict(layout="mosaic", in_channels=4), "layout 'bayer4'"),
    (dict(layout="bayer4", in_channels=1), "layout 'mosaic'"),
    (dict(layout="rgb", in_channels=1, channel_order="RGB"), "L"),
    (dict(layout="rgb", in_channels=4), "3 image channels"),
    (dict(layout="rgb", inputs=[{"name": "n", "kind": "gaussian", "channels": 45, "stride": 4, "concat": True}]),
     "stride 1"),
    (dict(multiple=2, tile=0, inputs=[{"name": "z", "kind": "gaussian", "stride": 4}]), "multiple of it"),
    (dict(inputs=[{"name": "z", "kind": "random"}]), "kind"),
    (dict(inputs=[{"name": "z", "kind": "gaussian", "sd": 1}]), "unknown fields"),
    (dict(inputs=[{"name": "a", "kind": "constant"}, {"name": "a", "kind": "constant"}]), "unique"),
    (dict(inputs=[{"name": "n", "kind": "noise_level", "stride": 2}]), "stride 1"),
    (dict(inputs=[{"name": "n", "kind": "noise_level", "channels": 3}]), "1 channel or one per"),
    (dict(inputs=[{"name": "n", "kind": "noise_level", "form": "k_sigma2"}]), "2 channels"),
])
def test_invalid_layouts_and_inputs(kw, msg):
    with pytest.raises(InputError, match=msg):
        ModelSpec(**kw)
