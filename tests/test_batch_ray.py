"""`rawdenoise batch` on Ray: a head and two worker nodes simulated on this machine.

The cluster runs in a child process of its own session (ray.cluster_utils.Cluster, driven through
its stdin), so the test can kill one of its nodes mid-job and end all of it by its process group.
The identity model makes every output's values checkable exactly.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'rawdenoise[ray]')")

from test_batch import CLI_READ, READ, leftovers, make_shots, output_of, read_pixels  # noqa: E402

from rawdenoise.batch import BatchReport, denoise_files  # noqa: E402
from rawdenoise.cli import main  # noqa: E402
from rawdenoise.fileio import sha256_file  # noqa: E402

CLUSTER = textwrap.dedent("""
    import json, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    # two logical CPUs per worker node: after one node dies, its actor restarts on the other
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "workers": [w.node_id for w in workers]}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["kill"]:
            node = next(w for w in workers if w.node_id == cmd[1])
            cluster.remove_node(node, allow_graceful=False)
            print("killed", flush=True)
        elif cmd[:1] == ["quit"]:
            break
    cluster.shutdown()
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.data import DataContext

    script = tmp_path_factory.mktemp("cluster") / "cluster.py"
    script.write_text(CLUSTER)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the simulated Ray cluster did not start (exit status {proc.wait(60)})")
        info = json.loads(line)
        ray.init(address=info["address"], logging_level="ERROR", log_to_driver=False)
        ctx = DataContext.get_current()
        saved = ctx.execution_no_progress_timeout_s
        ctx.execution_no_progress_timeout_s = 90   # a hang fails the test instead of stalling it
        info["driver_node"] = ray.get_runtime_context().get_node_id()

        def kill(node_id: str) -> None:
            proc.stdin.write(f"kill {node_id}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "killed"

        info["kill"] = kill
        yield info
        ctx.execution_no_progress_timeout_s = saved
    finally:
        ray.shutdown()
        try:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:  # whatever the cluster left running (raylets, workers) is in its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def comparable(report, out: Path) -> list[tuple]:
    return [(f["input"], str(Path(f["output"]).relative_to(out)), f["status"], f["error"]) for f in report.files]


@pytest.mark.slow
def test_ray_equals_one_machine(tmp_path, identity_pt, cluster, capsys):
    """The command line on the cluster and the API in this process: the same files, the same report."""
    frames = make_shots(tmp_path)
    (tmp_path / "shots/day2/broken.dng").write_bytes(b"not a raw file" * 40)
    before = {p: sha256_file(p) for p in (tmp_path / "shots").rglob("*") if p.is_file()}
    here = denoise_files(tmp_path / "shots", tmp_path / "here", model=identity_pt, read_options=READ, tile=0)
    rc = main([str(a) for a in ("batch", tmp_path / "shots", "-o", tmp_path / "ray", "--model", identity_pt,
                                "--tile", 0, *CLI_READ, "--ray", cluster["address"], "--actors", 2)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rawdenoise: error: ")]
    assert rc == 1 and len(err) == 2 and "broken.dng" in err[0] and "1 of 5 files failed" in err[1]
    on_ray = BatchReport(**{k: v for k, v in json.loads((tmp_path / "ray/report.json").read_text()).items()
                            if k in ("files", "executor")})
    assert tree(tmp_path / "ray") == tree(tmp_path / "here")               # byte for byte
    assert comparable(on_ray, tmp_path / "ray") == comparable(here, tmp_path / "here")
    # the corrupt input is reported with its reason, every other file is done
    assert (on_ray.done, on_ray.failed) == (len(frames), 1)
    assert on_ray.failures[0]["input"].endswith("broken.dng") and "LibRaw" in on_ray.failures[0]["error"]
    for rel, data in frames.items():
        np.testing.assert_array_equal(read_pixels(output_of(rel, tmp_path / "ray")), data)
    assert {f["node"] for f in on_ray.files} <= set(cluster["workers"])   # the head has no CPU for actors
    written = json.loads((tmp_path / "ray/report.json").read_text())
    assert written["counts"] == {"files": len(frames) + 1, "done": len(frames), "skipped": 0, "failed": 1}
    assert leftovers(tmp_path / "ray") == []
    assert {p: sha256_file(p) for p in before} == before                   # inputs unchanged


@pytest.mark.slow
def test_worker_node_killed_mid_job(tmp_path, identity_pt, cluster):
    """Three files per task: a task lost with its node is retried, and what it had written is not redone."""
    frames = make_shots(tmp_path, per_folder=14)       # 30 files
    out = tmp_path / "out"
    killed = {}

    def on_file(row):
        # kill the node that finished the first file: its actor is at work on the next one
        if not killed and row["node"] in cluster["workers"] and row["node"] != cluster["driver_node"]:
            killed["node"] = row["node"]
            killed["after"] = set()
            cluster["kill"](row["node"])
        elif killed:
            killed["after"].add(row["input"])

    report = denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0,
                           ray_address=cluster["address"], actors=2, files_per_task=3, on_file=on_file)
    assert killed and killed["after"], "the node was killed after the job had finished"
    assert (report.done, report.skipped, report.failed) == (len(frames), 0, 0), report.failures
    assert len(report.files) == len(frames)
    # every output once, whole, with its input's values; nothing else in the folder
    expected = {str(output_of(rel, out).relative_to(out)) for rel in frames}
    assert set(tree(out)) == expected
    for rel, data in frames.items():
        np.testing.assert_array_equal(read_pixels(output_of(rel, out)), data)
    assert leftovers(out) == []
    # work went on after the kill, on the surviving node
    late = [f for f in report.files if f["input"] in killed["after"]]
    assert any(f["node"] != killed["node"] for f in late)
    # a re-run finds everything done
    again = denoise_files(tmp_path / "shots", out, model=identity_pt, read_options=READ, tile=0,
                          ray_address=cluster["address"], actors=2)
    assert (again.done, again.skipped, again.failed) == (0, len(frames), 0)
