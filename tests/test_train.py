"""tools.train: a tiny run learns, is deterministic, resumes exactly, and exports a correct artifact."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rawdenoise import Denoiser, zoo  # noqa: E402
from tools import train  # noqa: E402
from tools.synth import pack_rggb  # noqa: E402

TINY = dict(name="tiny", arch="unet", arch_kwargs={"width": 4, "depth": 1}, patch=16, batch=4, steps=40,
            lr=3e-3, min_lr=1e-4, warmup=5, pool_size=2, scene_size=64, val_isos=[1600], val_n=2,
            val_every=1000, checkpoint_every=10, threads=1, tile=64, iso_range=[800, 6400])


def tiny(**kw):
    return train.TrainConfig.from_dict({**TINY, **kw})


def state(path):
    return zoo.read(path)["state_dict"]


def test_lr_schedule_warms_up_then_follows_a_cosine():
    cfg = tiny(steps=110, warmup=10, lr=1e-3, min_lr=1e-5)
    assert train.lr_at(0, cfg) == pytest.approx(1e-4)
    assert train.lr_at(9, cfg) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert train.lr_at(110, cfg) == pytest.approx(1e-5)


def test_loss_decreases(tmp_path):
    t = train.Trainer(tiny(steps=60), tmp_path, log=lambda *_: None)
    clean, noisy, isos = t.val_data.batch(99, 8)

    def l1():
        with torch.no_grad():
            y, g, o = t.forward(noisy, isos)
            return float(torch.nn.functional.l1_loss(y, torch.from_numpy(clean) * g + o))

    before = l1()
    t.run()
    assert l1() < 0.7 * before
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    assert "1600" in log[-1]["val_psnr"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = train.Trainer(tiny(steps=8), tmp_path / "a", log=lambda *_: None).run()
    b = train.Trainer(tiny(steps=8), tmp_path / "b", log=lambda *_: None).run()
    c = train.Trainer(tiny(steps=8, seed=1), tmp_path / "c", log=lambda *_: None).run()
    sa, sb, sc = state(a), state(b), state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_continues_exactly(tmp_path):
    straight = train.Trainer(tiny(steps=20), tmp_path / "s", log=lambda *_: None).run()
    assert train.Trainer(tiny(steps=20), tmp_path / "r", log=lambda *_: None).run(until=12) is None
    assert not (tmp_path / "r" / "model.pt").exists()
    resumed = train.Trainer(tiny(steps=20), tmp_path / "r", log=lambda *_: None).run()
    s1, s2 = state(straight), state(resumed)
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=1e-7)


def test_resume_refuses_a_different_config(tmp_path):
    train.Trainer(tiny(steps=4), tmp_path, log=lambda *_: None).run(until=2)
    with pytest.raises(train.InputError, match="different config"):
        train.Trainer(tiny(steps=4, lr=1e-2), tmp_path, log=lambda *_: None).run()


def test_artifact_runs_through_the_denoiser_as_trained(tmp_path, rng):
    t = train.Trainer(tiny(steps=6), tmp_path, log=lambda *_: None)
    path = t.run()
    module, spec = zoo.load(path)
    assert spec.ksigma is not None and spec.name == "tiny"
    assert spec.notes["training_profile"]["name"] == t.profile.name
    assert "dead-leaves" in spec.notes["trained"]
    # a frame in DN, denoised by Denoiser.run with an ISO, against the trainer's own forward
    iso = 3200.0
    clean, noisy, _ = t.val_data.batch(0, 1, iso=iso)
    mosaic = np.empty((32, 32), np.float32)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2] = noisy[0]
    black, white = 512.0, t.profile.white_level
    dn = mosaic * (white - black) + black
    with Denoiser.load(path, border=0) as d:
        out = d.run(dn, cfa="RGGB", black_level=black, white_level=white, iso=iso)
        k, s2 = t.profile.normalised(iso)
        out_noise = d.run(dn, cfa="RGGB", black_level=black, white_level=white, noise=(k, s2))
    with torch.no_grad():
        y, g, o = t.forward(noisy, np.array([iso]))
        ref = ((y - o) / g).numpy()[0]
    got = pack_rggb((out - black) / (white - black))
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(out_noise, out, atol=1e-3)


def test_cli_trains_and_reports_bad_configs(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "steps": 3}))
    assert train.main(["--config", str(cfg), "-o", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "stepz": 3}))
    assert train.main(["--config", str(bad), "-o", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert "stepz" in err and "Traceback" not in err


def test_fine_tuning_starts_from_the_init_weights(tmp_path):
    first = train.Trainer(tiny(steps=20), tmp_path / "a", log=lambda *_: None).run()
    t = train.Trainer(tiny(steps=10, init=str(first), seed=5), tmp_path / "b", log=lambda *_: None)
    for name, w in t.model.state_dict().items():
        assert torch.equal(w, state(first)[name]), name
    out = t.run()
    notes = zoo.read(out)["spec"]["notes"]
    assert notes["trained"].startswith(f"fine-tuned from {first.name}")
    assert notes["init"]["trained"] == zoo.read(first)["spec"]["notes"]["trained"]
    assert len(notes["init"]["sha256"]) == 64
    with pytest.raises(train.InputError, match="trains unet"):
        train.Trainer(tiny(init=str(first), arch_kwargs={"width": 2, "depth": 1}), tmp_path / "c")
    with pytest.raises(train.InputError, match="another input transform"):
        train.Trainer(tiny(init=str(first), input_scale=4.0), tmp_path / "d")


def test_a_narrower_init_is_widened_and_starts_out_unchanged(tmp_path):
    first = train.Trainer(tiny(steps=5), tmp_path / "a", log=lambda *_: None).run()
    wide = train.Trainer(tiny(steps=5, init=str(first), arch_kwargs={"width": 6, "depth": 1}), tmp_path / "b",
                         log=lambda *_: None)
    narrow = train.Trainer(tiny(steps=5), tmp_path / "c", log=lambda *_: None)
    narrow.model.load_state_dict(state(first))
    noisy = np.random.default_rng(0).uniform(0, 0.5, (2, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        got, _, _ = wide.forward(noisy, np.array([1600.0, 3200.0]))
        ref, _, _ = narrow.forward(noisy, np.array([1600.0, 3200.0]))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-6)
    notes = zoo.read(wide.run())["spec"]["notes"]
    assert notes["init"]["widened"].startswith("width 4 -> 6")
    assert "widened" in notes["trained"]
    with pytest.raises(train.InputError, match="only a UNet's width"):
        train.Trainer(tiny(init=str(first), arch_kwargs={"width": 6, "depth": 2}), tmp_path / "d")


def test_qat_option_is_checked_and_selects_the_qat_trainer(tmp_path):
    cfg = tiny(qat="tensorrt")
    assert cfg.qat["target"] == "tensorrt" and cfg.qat["calibration_batches"] >= 1
    assert type(train.trainer_for(tiny(), tmp_path / "a", log=lambda *_: None)) is train.Trainer
    with pytest.raises(train.InputError, match="qat target 'npu' is not one of cpu, tensorrt"):
        tiny(qat={"target": "npu"})


def test_a_param_group_lr_scale_follows_the_schedule(tmp_path):
    t = train.Trainer(tiny(steps=4), tmp_path, log=lambda *_: None)
    extra = torch.nn.Parameter(torch.zeros(()))
    t.opt.add_param_group({"params": [extra], "lr_scale": 10.0})
    t.run(until=2)
    assert t.opt.param_groups[1]["lr"] == pytest.approx(10 * t.opt.param_groups[0]["lr"])
