"""`rawdenoise batch` in this process (no Ray): inputs, output names, skip/overwrite, failures, report.

An all-zero-weight UNet is the identity, so every output must hold exactly its input's values.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from rawdenoise import dng
from rawdenoise.batch import FrameWorker, JobOptions, denoise_files
from rawdenoise.batch_inputs import collect_inputs
from rawdenoise.cli import main
from rawdenoise.errors import InputError, MissingDependencyError
from rawdenoise.fileio import sha256_file

LEVELS = {"cfa": "GRBG", "black_level": 64, "white_level": 4095}
DUMP = {"width": 30, "height": 22}
READ = {**LEVELS, **DUMP}       # the frame options of a mixed folder (every file has these levels)
CLI_READ = ["--width", 30, "--height", 22, "--cfa", "GRBG", "--black", 64, "--white", 4095]


def make_shots(root: Path, seed: int = 0, per_folder: int = 1) -> dict[str, np.ndarray]:
    """shots/day1/{a0.dng, b.npy+b.json}, shots/day2/{a0.dng, d.raw}: DNG, NPY and a headerless dump,
    the same stem in two folders. Returns relative input path -> pixels."""
    pytest.importorskip("rawpy")
    rng = np.random.default_rng(seed)
    frames = {}
    for day in ("day1", "day2"):
        folder = root / "shots" / day
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            data = rng.integers(64, 4096, (24, 40)).astype(np.uint16)
            dng.write_dng(folder / f"a{i}.dng", data, **LEVELS, meta={"iso": 800})
            frames[f"shots/{day}/a{i}.dng"] = data
    data = rng.integers(64, 4096, (26, 34)).astype(np.uint16)
    np.save(root / "shots/day1/b.npy", data)
    (root / "shots/day1/b.json").write_text(json.dumps(LEVELS))
    frames["shots/day1/b.npy"] = data
    data = rng.integers(64, 4096, (22, 30)).astype(np.uint16)
    data.astype("<u2").tofile(root / "shots/day2/d.raw")
    frames["shots/day2/d.raw"] = data
    return frames


def output_of(rel: str, out: Path, suffix: str = ".dng") -> Path:
    return out / Path(rel).relative_to("shots").with_suffix(suffix)


def read_pixels(path: Path) -> np.ndarray:
    from rawdenoise.rawio import read_raw

    return np.asarray(read_raw(path).data)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and attempt markers (every name this job may leave starts with a dot)."""
    return [p for p in folder.rglob(".*")]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted((root / "shots").rglob("*")) if p.is_file()}


# ---- inputs ---------------------------------------------------------------------------------------------
def test_collect_inputs_roots_and_manifest(tmp_path, monkeypatch):
    make_shots(tmp_path)
    monkeypatch.chdir(tmp_path)
    by_glob = {str(s.rel) for s in collect_inputs("shots/**/*")}
    assert by_glob == {"day1/a0.dng", "day1/b.npy", "day2/a0.dng", "day2/d.raw"}   # no .json sidecar
    assert {str(s.rel) for s in collect_inputs(tmp_path / "shots")} == by_glob
    assert [str(s.rel) for s in collect_inputs("shots/day1/a0.dng")] == ["a0.dng"]
    # a manifest: relative lines relative to its folder, comments and blank lines ignored, duplicates once
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/m.txt").write_text("# shots of the day\n../shots/day2/a0.dng\n\n"
                                           f"{tmp_path}/shots/day1/a0.dng\n../shots/day2/a0.dng\n")
    found = collect_inputs("lists/m.txt")
    assert [s.path for s in found] == [tmp_path / "shots/day2/a0.dng", tmp_path / "shots/day1/a0.dng"]
    (tmp_path / "shots/m.txt").write_text("day1/a0.dng\nday2/a0.dng\nday2/missing.dng\n")
    found = collect_inputs("shots/m.txt")
    assert [str(s.rel) for s in found] == ["day1/a0.dng", "day2/a0.dng", "day2/missing.dng"]
    assert [s.missing for s in found] == [False, False, True]
    # the output folder is never an input, even inside the folder given
    (tmp_path / "shots/out").mkdir()
    (tmp_path / "shots/out/x.dng").write_bytes(b"x")
    assert all("out" not in s.rel.parts for s in collect_inputs("shots", exclude=tmp_path / "shots/out"))


@pytest.mark.parametrize("arg, words", [("nothing/*.dng", "matches no file"), ("nope.dng", "is not a file"),
                                        ("empty", "holds no RAW file")])
def test_bad_inputs_refused(tmp_path, monkeypatch, arg, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=words):
        collect_inputs(arg)


# ---- one machine, end to end ----------------------------------------------------------------------------
def test_mixed_folder_identity_exact(tmp_path, identity_pt, monkeypatch):
    frames = make_shots(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = digests(tmp_path)
    seen = []
    report = denoise_files("shots/**/*", "out", model=identity_pt, read_options=READ, tile=0, on_file=seen.append)
    out = tmp_path / "out"
    assert (report.done, report.skipped, report.failed) == (4, 0, 0), report.failures
    for rel, data in frames.items():
        np.testing.assert_array_equal(read_pixels(output_of(rel, out)), data)
    assert len(seen) == 4 and all(row["status"] == "done" for row in seen)
    assert digests(tmp_path) == before                      # inputs unchanged
    assert leftovers(out) == []                            # no temporary file, no marker
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert written["counts"] == {"files": 4, "done": 4, "skipped": 0, "failed": 0}
    assert [f["input"] for f in written["files"]] == [str(tmp_path / r) for r in
                                                      ("shots/day1/a0.dng", "shots/day1/b.npy", "shots/day2/a0.dng",
                                                       "shots/day2/d.raw")]
    assert all(set(f) >= {"input", "output", "status", "error"} for f in written["files"])


def test_skip_existing_then_overwrite(tmp_path, identity_pt, monkeypatch):
    make_shots(tmp_path)
    monkeypatch.chdir(tmp_path)
    denoise_files("shots/**/*", "out", model=identity_pt, read_options=READ, tile=0)
    outs = sorted((tmp_path / "out").rglob("*.dng"))
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outs}
    again = denoise_files("shots/**/*", "out", model=identity_pt, read_options=READ, tile=0)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outs} == stamp   # not written again
    # a missing output is the only work a re-run does (resume after a crash)
    outs[0].unlink()
    resumed = denoise_files("shots/**/*", "out", model=identity_pt, read_options=READ, tile=0)
    assert (resumed.done, resumed.skipped) == (1, 3)
    redo = denoise_files("shots/**/*", "out", model=identity_pt, read_options=READ, tile=0, overwrite=True)
    assert (redo.done, redo.skipped, redo.failed) == (4, 0, 0)
    assert all(p.stat().st_ino != stamp[p][0] for p in outs[1:])                  # replaced by a rename


def test_npy_output_needs_both_files_to_skip(tmp_path, identity_pt):
    frames = make_shots(tmp_path)
    out = tmp_path / "out"
    denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0, format="npy")
    for rel, data in frames.items():
        np.testing.assert_array_equal(np.load(output_of(rel, out, ".npy")), data)
        assert json.loads(output_of(rel, out, ".json").read_text())["cfa"] == "GRBG"
    output_of("shots/day2/a0.dng", out, ".json").unlink()
    again = denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0, format="npy")
    row = next(f for f in again.files if f["input"].endswith("day2/a0.dng"))
    assert row["status"] == "error" and "already exists" in row["error"] and "--overwrite" in row["error"]
    assert again.skipped == 3


def test_corrupt_file_reported_rest_done(tmp_path, identity_pt):
    frames = make_shots(tmp_path)
    bad = tmp_path / "shots/day1/broken.dng"
    bad.write_bytes(b"not a raw file" * 50)
    report = denoise_files(tmp_path / "shots", tmp_path / "out", model=identity_pt, read_options=READ, tile=0)
    assert (report.done, report.failed) == (len(frames), 1)
    (failure,) = report.failures
    assert failure["input"] == str(bad) and "\n" not in failure["error"] and "broken.dng" in failure["error"]
    assert not (tmp_path / "out/day1/broken.dng").exists()
    assert leftovers(tmp_path / "out") == []
    # a re-run retries only the failed file
    again = denoise_files(tmp_path / "shots", tmp_path / "out", model=identity_pt, read_options=READ, tile=0)
    assert (again.done, again.skipped, again.failed) == (0, len(frames), 1)


def test_manifest_missing_line_reported(tmp_path, identity_pt):
    make_shots(tmp_path)
    manifest = tmp_path / "shots/list.txt"
    manifest.write_text("day1/a0.dng\nday2/gone.dng\nday2/a0.dng\n")
    report = denoise_files(manifest, tmp_path / "out", model=identity_pt, tile=0)
    assert [f["status"] for f in report.files] == ["done", "error", "done"]
    assert "does not exist" in report.files[1]["error"]
    assert (tmp_path / "out/day1/a0.dng").is_file() and (tmp_path / "out/day2/a0.dng").is_file()


def test_stale_temporary_files_removed(tmp_path, identity_pt):
    make_shots(tmp_path)
    out = tmp_path / "out/day1"
    out.mkdir(parents=True)
    # what a killed worker leaves: a half-written temporary file and an attempt marker of an older job
    (out / ".a0.dng.k2j4h1.part").write_bytes(b"half")
    (out / ".a0.dng.0123456789ab.try").write_text("1")
    (out / ".unrelated").write_text("kept")
    denoise_files(tmp_path / "shots", tmp_path / "out", model=identity_pt, read_options=READ, tile=0)
    assert leftovers(tmp_path / "out") == [out / ".unrelated"]


def test_file_that_keeps_killing_its_worker(tmp_path, identity_pt):
    """The attempt marker: after `attempts` deaths on a file, the next attempt reports it instead."""
    frames = make_shots(tmp_path)
    src = tmp_path / "shots/day1/a0.dng"
    dst = tmp_path / "o.dng"
    worker = FrameWorker(JobOptions(model=str(identity_pt), tile=0, attempts=2, job_id="job1"))
    try:
        marker = tmp_path / ".o.dng.job1.try"
        marker.write_text("2")                      # two attempts started and never finished
        row = worker.process(src, dst)
        assert row["status"] == "error" and "stopped the worker 2 times" in row["error"] and not dst.exists()
        marker.write_text("1")                      # one death: this attempt runs
        row = worker.process(src, dst)
        assert row["status"] == "done" and not marker.exists()
        np.testing.assert_array_equal(read_pixels(dst), frames["shots/day1/a0.dng"])
    finally:
        worker.close()


# ---- refusals before any work ---------------------------------------------------------------------------
def test_same_name_from_two_folders_refused(tmp_path, identity_pt):
    make_shots(tmp_path)
    a, b = tmp_path / "shots/day1/a0.dng", tmp_path / "shots/day2/a0.dng"
    with pytest.raises(InputError, match="would both write") as e:
        denoise_files([a, b], tmp_path / "out", model=identity_pt)
    assert str(a) in str(e.value) and str(b) in str(e.value) and "subfolders" in str(e.value)
    assert not list((tmp_path / "out").rglob("*.dng"))


def test_output_cannot_replace_an_input(tmp_path, identity_pt):
    make_shots(tmp_path)
    with pytest.raises(InputError, match="which is an input"):
        denoise_files(tmp_path / "shots/day1/b.npy", tmp_path / "shots/day1", model=identity_pt, format="npy")


def test_output_inside_input_folder_not_picked_up(tmp_path, identity_pt):
    make_shots(tmp_path)
    out = tmp_path / "shots/denoised"
    first = denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0)
    second = denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0)
    assert len(first.files) == len(second.files) == 4 and second.skipped == 4


def test_ray_missing_names_the_extra(tmp_path, identity_pt, monkeypatch):
    make_shots(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)   # as if not installed
    with pytest.raises(MissingDependencyError, match=r"rawdenoise\[ray\]"):
        denoise_files(tmp_path / "shots/day1/a0.dng", tmp_path / "out", model=identity_pt, ray_address="auto")


# ---- command line -------------------------------------------------------------------------------------
def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_one_line_per_error_and_exit_status(tmp_path, identity_pt, capsys, monkeypatch):
    make_shots(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shots/day1/broken.dng").write_bytes(b"\0" * 300)
    (tmp_path / "shots/day2/short.raw").write_bytes(b"\0" * 10)
    rc, out, err = _run(["batch", "shots/**/*", "-o", "out", "--model", identity_pt, "--tile", 0, *CLI_READ], capsys)
    assert rc == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("rawdenoise: error: ") for line in lines), err
    assert "broken.dng" in lines[0] or "broken.dng" in lines[1]
    assert any("short.raw" in line and "need exactly" in line for line in lines)
    assert "2 of 6 files failed" in lines[-1]
    assert json.loads((tmp_path / "out/report.json").read_text())["counts"]["failed"] == 2
    for p in ("shots/day1/broken.dng", "shots/day2/short.raw"):
        os.unlink(tmp_path / p)
    rc, _, err = _run(["batch", "shots/**/*", "-o", "out", "--model", identity_pt, "--tile", 0, *CLI_READ], capsys)
    assert rc == 0 and "rawdenoise: error" not in err and "0 done, 4 skipped" in err


def test_cli_refusals_are_one_line(tmp_path, identity_pt, capsys):
    make_shots(tmp_path)
    for argv in (["batch", tmp_path / "shots/day1/a0.dng", tmp_path / "shots/day2/a0.dng", "-o", tmp_path / "o"],
                 ["batch", str(tmp_path / "nothing/*.dng"), "-o", tmp_path / "o"],
                 ["batch", tmp_path / "shots", "-o", tmp_path / "o", "--model", tmp_path / "missing.onnx"],
                 ["batch", tmp_path / "shots", "-o", tmp_path / "o", "--actors", 0, "--ray", "local"]):
        rc, _, err = _run(argv + ["--model", identity_pt] if "--model" not in argv else argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("rawdenoise: error: "), err
    assert not list(tmp_path.rglob("o/**/*.dng"))


def test_cli_help_lists_batch(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "batch" in capsys.readouterr().out
