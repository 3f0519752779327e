"""Train a zoo architecture on synthetic pairs: ``python -m tools.train --config CFG.json -o RUN_DIR``.

Noise-level conditioning is the manifest's k-sigma transform (as in PMRID): a frame at any ISO is
mapped by ``x * gain + offset`` to the noise level of an anchor ISO, the network denoises there,
and the inverse maps back. Training applies exactly the transform `Denoiser.run` applies, through
the same `KSigma.gain_offset`, so the artifact written at the end runs correctly with an ISO or
with the blind estimate. L1 loss in the transformed domain, Adam, cosine schedule with linear
warm-up; validation PSNR per ISO goes to ``RUN_DIR/log.jsonl``; ``RUN_DIR/checkpoint.pt`` makes a
run resumable, and a run is a function of its config (seeded data and weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rawdenoise.errors import InputError, run_cli
from rawdenoise.fileio import atomic_output, sha256_file
from rawdenoise.tiling import suggest_tile

from rawdenoise.profile import NoiseProfile, default_profile
from .synth import PairSource


@dataclass
class TrainConfig:
    name: str = "model"
    arch: str = "unet"
    arch_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16, "depth": 3})
    profile: str | dict | None = None     # path, inline dict, or None for the generic default profile
    anchor_iso: float = 3200.0
    input_scale: float = 1.0               # manifest `scale`: network input = ksigma(x) * input_scale
    iso_range: tuple[float, float] = (100.0, 12800.0)
    patch: int = 64                        # packed pixels
    batch: int = 16
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    pool_size: int = 64
    scene_size: int = 384
    row_noise: float = 0.0
    fine_scenes: float = 0.0               # fraction of the scene pool with photograph-like fine detail
    val_isos: tuple[float, ...] = (400.0, 1600.0, 3200.0, 6400.0)
    val_n: int = 8
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int | None = None
    tile: int | None = None  # preferred tile of the artifact; None: sized from the receptive field
    # "frame": a model for any camera estimates each frame's noise (file ISOs are not trusted);
    # "iso": a model trained on the user's own camera profile uses the file's ISO
    noise_source: str = "iso"
    # a .pt artifact of the same architecture and transform whose weights start the run (fine-tuning)
    init: str | None = None
    # quantization-aware fine-tuning of `init` for INT8 (tools.qat): {"target": "cpu" | "tensorrt", ...}
    qat: dict | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.iso_range = tuple(float(v) for v in cfg.iso_range)
        cfg.val_isos = tuple(float(v) for v in cfg.val_isos)
        if cfg.steps < 1 or cfg.batch < 1 or cfg.patch < 8:
            raise InputError("steps and batch must be >= 1 and patch >= 8")
        if cfg.qat is not None:
            from .qat import QatOptions

            cfg.qat = asdict(QatOptions.from_value(cfg.qat))
        return cfg

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"training config {path} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise InputError(f"training config {path} is not valid JSON: {e}") from None

    def noise_profile(self) -> NoiseProfile:
        if self.profile is None:
            return default_profile()
        if isinstance(self.profile, dict):
            return NoiseProfile.from_dict(self.profile)
        return NoiseProfile.load(self.profile)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


class Trainer:
    """One training run in `run_dir`; `run()` trains (resuming if a checkpoint is there)."""

    def __init__(self, cfg: TrainConfig, run_dir, *, device: str | None = None, log=print):
        import torch

        from rawdenoise import zoo

        self.torch = torch
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log = log
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(cfg.seed)
        self.profile = cfg.noise_profile()
        self.model = zoo.create(cfg.arch, **cfg.arch_kwargs).to(self.device)
        spec = zoo.default_spec(cfg.arch, **cfg.arch_kwargs)
        if spec.layout != "bayer4" or spec.in_channels != 4:
            raise InputError(f"training needs a 4-channel bayer4 architecture; {cfg.arch} takes {spec.in_channels} "
                             f"{spec.layout} channels")
        self.ksigma = self.profile.ksigma(cfg.anchor_iso)
        self.spec = spec.replace(name=cfg.name, ksigma=self.ksigma, scale=float(cfg.input_scale),
                                 noise_source=cfg.noise_source)
        if cfg.tile is not None:
            self.spec = self.spec.replace(tile=max(cfg.tile, spec.multiple))
        self.init_notes = self._init_from(cfg.init) if cfg.init else None
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.step = 0
        self.data = PairSource(self.profile, patch=cfg.patch, iso_range=cfg.iso_range, seed=cfg.seed,
                               pool_size=cfg.pool_size, scene_size=cfg.scene_size, row_noise=cfg.row_noise,
                               fine_scenes=cfg.fine_scenes)
        # validation data: another seed, so a disjoint pool of scenes
        self.val_data = PairSource(self.profile, patch=cfg.patch, iso_range=cfg.iso_range, seed=cfg.seed + 10_000,
                                   pool_size=max(4, cfg.val_n // 2), scene_size=cfg.scene_size,
                                   row_noise=cfg.row_noise, fine_scenes=cfg.fine_scenes)

    def _init_from(self, path) -> dict:
        """Start from the weights of an artifact trained for the same network and transform;
        returns its provenance for the manifest (read now, as the file may be replaced later)."""
        from rawdenoise.spec import ModelSpec
        from rawdenoise.zoo.artifact import read

        payload = read(path)
        spec = ModelSpec.from_dict(payload["spec"])
        kwargs = dict(payload["arch_kwargs"])
        # a narrower UNet is widened so that it starts out computing what it computed (tools.widen)
        widen = (payload["arch"] == self.cfg.arch == "unet"
                 and kwargs.get("width", 0) < self.cfg.arch_kwargs.get("width", 0)
                 and {**kwargs, "width": self.cfg.arch_kwargs["width"]} == self.cfg.arch_kwargs)
        if payload["arch"] != self.cfg.arch or (kwargs != self.cfg.arch_kwargs and not widen):
            raise InputError(f"init model {path} is {payload['arch']} {payload['arch_kwargs']}; this config trains "
                             f"{self.cfg.arch} {self.cfg.arch_kwargs} (only a UNet's width may grow)")
        if (spec.ksigma, spec.scale, spec.offset) != (self.spec.ksigma, self.spec.scale, self.spec.offset):
            raise InputError(f"init model {path} was trained with another input transform (k-sigma anchor, "
                             f"profile or input_scale); its weights would not fit this config's inputs")
        state = payload["state_dict"]
        notes = {"file": Path(path).name, "sha256": sha256_file(path), "trained": (spec.notes or {}).get("trained")}
        if widen:
            from .widen import widen_unet_state

            state = widen_unet_state(state, self.model)
            notes["widened"] = f"width {kwargs['width']} -> {self.cfg.arch_kwargs['width']} (tools.widen)"
        self.model.load_state_dict(state, strict=True)
        return notes

    # ---- the k-sigma transform, exactly as Denoiser.run applies it --------------------------
    def affine(self, isos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample (gain, offset) of network_input = x * gain + offset (k-sigma, then scale)."""
        go = np.array([self.ksigma.gain_offset(iso=float(i)) for i in isos], np.float64)
        sc = self.spec.scale
        return (go[:, 0] * sc).astype(np.float32), (go[:, 1] * sc + self.spec.offset).astype(np.float32)

    def forward(self, noisy: np.ndarray, isos: np.ndarray):
        """Network output in the transformed domain, and the (gain, offset) tensors used."""
        torch = self.torch
        gain, offset = self.affine(isos)
        g = torch.from_numpy(gain).to(self.device)[:, None, None, None]
        o = torch.from_numpy(offset).to(self.device)[:, None, None, None]
        x = torch.from_numpy(noisy).to(self.device) * g + o
        return self.model(x), g, o

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        payload = {"step": self.step, "config": json.loads(json.dumps(asdict(self.cfg))),
                   "model": self.model.state_dict(), "optim": self.opt.state_dict()}
        with atomic_output(self.checkpoint_path) as tmp:
            self.torch.save(payload, tmp)

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        from rawdenoise.zoo.artifact import safe_torch_load as load

        ck = load(self.checkpoint_path)
        saved = ck["config"]
        now = json.loads(json.dumps(asdict(self.cfg)))
        differ = sorted(k for k in now if k not in ("steps", "threads", "val_every", "checkpoint_every")
                        and saved.get(k) != now[k])
        if differ:
            raise InputError(f"{self.checkpoint_path} was written with a different config ({', '.join(differ)}); "
                             f"use a new run directory or --no-resume")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optim"])
        self.step = int(ck["step"])
        return True

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        torch = self.torch
        self.model.eval()
        out = {}
        with torch.no_grad():
            for j, iso in enumerate(self.cfg.val_isos):
                clean, noisy, isos = self.val_data.batch(j, self.cfg.val_n, iso=iso)
                y, g, o = self.forward(noisy, isos)
                den = ((y - o) / g).cpu().numpy()
                out[f"{int(iso)}"] = round(psnr(den, clean), 3)
                out[f"{int(iso)}_noisy"] = round(psnr(noisy, clean), 3)
        self.model.train()
        return out

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, *, resume: bool = True, until: int | None = None) -> Path | None:
        """Train to cfg.steps and export RUN_DIR/model.pt; with `until`, stop after that step
        (checkpoint written, nothing exported) so a later `run()` resumes from there."""
        torch = self.torch
        stop = self.cfg.steps if until is None else min(until, self.cfg.steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.resume():
            self.log(f"resumed at step {self.step}")
        log_path = self.run_dir / "log.jsonl"
        self.model.train()
        t0, seen = time.time(), 0
        from concurrent.futures import ThreadPoolExecutor

        # the next batch is synthesised on a second thread while this one trains; batches depend
        # only on (seed, step), so this changes nothing in the result
        with open(log_path, "a") as logf, ThreadPoolExecutor(1) as pool:
            upcoming = pool.submit(self.data.batch, self.step, self.cfg.batch)
            while self.step < stop:
                for grp in self.opt.param_groups:
                    grp["lr"] = lr_at(self.step, self.cfg) * grp.get("lr_scale", 1.0)
                clean, noisy, isos = upcoming.result()
                if self.step + 1 < stop:
                    upcoming = pool.submit(self.data.batch, self.step + 1, self.cfg.batch)
                y, g, o = self.forward(noisy, isos)
                target = torch.from_numpy(clean).to(self.device) * g + o
                loss = torch.nn.functional.l1_loss(y, target)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.opt.step()
                self.step += 1
                seen += 1
                rec = {"step": self.step, "loss": float(loss.detach()), "lr": lr_at(self.step - 1, self.cfg)}
                last = self.step == self.cfg.steps
                if self.step % self.cfg.val_every == 0 or last:
                    rec["val_psnr"] = self.validate()
                    rec["s_per_step"] = round((time.time() - t0) / seen, 4)
                    self.log(json.dumps(rec))
                logf.write(json.dumps(rec) + "\n")
                if self.step % self.cfg.checkpoint_every == 0 or last or self.step == stop:
                    logf.flush()
                    self.save_checkpoint()
        return self.export() if self.step >= self.cfg.steps else None

    def export(self) -> Path:
        """Write RUN_DIR/model.pt: the SDK artifact, its manifest recording how it was trained."""
        from rawdenoise import zoo

        val = self.validate()
        cfg = self.cfg
        widened = "; widened: notes.init.widened" if self.init_notes and "widened" in self.init_notes else ""
        start = f"fine-tuned from {Path(cfg.init).name} (how that was trained: notes.init{widened}), then " if cfg.init else ""
        fine = f" ({cfg.fine_scenes:.0%} of them with photograph-like fine detail)" if cfg.fine_scenes else ""
        notes = {
            "training_profile": self.profile.to_dict(),
            "trained": (
                f"{start}tools.train: {cfg.steps} steps of Adam (lr {cfg.lr}, cosine to {cfg.min_lr}, "
                f"{cfg.warmup} warm-up), L1 in the k-sigma domain (anchor ISO {cfg.anchor_iso:g}), "
                f"batches of {cfg.batch} x {cfg.patch}x{cfg.patch} packed patches from procedural "
                f"dead-leaves scenes{fine} unprocessed to RAW (random colour matrix, white balance, exposure), "
                f"Poisson-Gaussian noise from the training profile at ISO log-uniform in "
                f"{cfg.iso_range[0]:g}-{cfg.iso_range[1]:g}, seed {cfg.seed}"
            ),
            "config": json.loads(json.dumps(asdict(self.cfg))),
            **({"init": self.init_notes} if self.init_notes else {}),
            "val_psnr": val,
            "noise_estimate": "with no ISO given, rawdenoise.noise.estimate_noise fits k and sigma^2 on the frame",
        }
        self.model.eval()
        path = self.run_dir / "model.pt"
        spec = self.spec.replace(notes=notes)
        if self.cfg.tile is None:
            radius = zoo.measure_receptive_radius(self.model.cpu(), spec)
            spec = spec.replace(receptive_radius=radius, tile=suggest_tile(radius, spec.multiple))
        zoo.save(self.model.cpu(), path, spec)
        self.model.to(self.device)
        return path


def trainer_for(cfg: TrainConfig, run_dir, **kwargs) -> Trainer:
    """A Trainer, or a QatTrainer (tools.qat) when the config asks for quantization-aware training."""
    if cfg.qat is None:
        return Trainer(cfg, run_dir, **kwargs)
    from .qat import QatTrainer

    return QatTrainer(cfg, run_dir, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training config (JSON); see tools/configs/")
    ap.add_argument("-o", "--output", required=True, help="run directory (log, checkpoint, model.pt)")
    ap.add_argument("--steps", type=int, help="override the config's step count")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="continue from RUN_DIR/checkpoint.pt when present (default: yes)")
    ap.add_argument("--qat", choices=("cpu", "tensorrt"),
                    help="quantization-aware fine-tuning of the config's init for this INT8 target "
                         "(writes RUN_DIR/model.int8.onnx; other settings from the config's 'qat')")
    args = ap.parse_args(argv)

    def body() -> int:
        cfg = TrainConfig.load(args.config)
        if args.steps:
            cfg.steps = args.steps
        if args.qat:
            cfg = TrainConfig.from_dict({**asdict(cfg), "qat": {**(cfg.qat or {}), "target": args.qat}})
        path = trainer_for(cfg, args.output, device=args.device).run(resume=args.resume)
        print(f"wrote {path}")
        return 0

    return run_cli(body, "train")


if __name__ == "__main__":
    sys.exit(main())
