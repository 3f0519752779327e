"""Turn a pytest-benchmark JSON file into a Markdown table and a PNG chart.

    pytest --benchmark-only --benchmark-json=BENCH.json
    python -m benchmarks.report BENCH.json [-o report.md] [--png report.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(data: dict) -> list[dict]:
    out = []
    for b in data["benchmarks"]:
        s = b["stats"]
        out.append({"name": b["name"], "group": b.get("group") or "", "min_s": s["min"], "median_s": s["median"],
                    "rounds": s["rounds"], "extra": b.get("extra_info", {})})
    return out


def _fmt_extra(extra: dict) -> str:
    keep = []
    for k, v in extra.items():
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
        keep.append(f"{k}={v}")
    return "; ".join(keep)


def markdown(data: dict) -> str:
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", "?")
    lines = [f"Machine: {cpu}, {mi.get('cpu', {}).get('count', '?')} logical cores, Python {mi.get('python_version', '?')}",
             "", "| benchmark | group | min (s) | median (s) | rounds | notes |", "|---|---|---|---|---|---|"]
    for r in rows(data):
        lines.append(f"| {r['name']} | {r['group']} | {r['min_s']:.4f} | {r['median_s']:.4f} | {r['rounds']} | "
                     f"{_fmt_extra(r['extra'])} |")
    # SDK overhead: Denoiser.run vs the bare runner in each group
    groups: dict[str, dict[str, float]] = {}
    for r in rows(data):
        kind = "run" if r["name"].startswith("test_denoiser_run") else "bare" if r["name"].startswith("test_bare_runner") else None
        if kind:
            groups.setdefault(r["group"], {})[kind] = r["min_s"]
    ratios = [(g, v["run"] / v["bare"]) for g, v in sorted(groups.items()) if "run" in v and "bare" in v]
    if ratios:
        lines += ["", "| case | Denoiser.run / bare runner |", "|---|---|"]
        lines += [f"| {g} | {x:.3f} |" for g, x in ratios]
    return "\n".join(lines) + "\n"


def chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = rows(data)
    fig, ax = plt.subplots(figsize=(10, max(3, 0.28 * len(rs))))
    ax.barh([r["name"] for r in rs], [r["min_s"] for r in rs])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (min over rounds, log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description="pytest-benchmark JSON -> Markdown + PNG")
    p.add_argument("json", type=Path)
    p.add_argument("-o", "--output", type=Path, help="Markdown file (default: stdout)")
    p.add_argument("--png", type=Path, help="bar chart")
    args = p.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"report: error: cannot read {args.json}: {e}", file=sys.stderr)
        return 1
    md = markdown(data)
    if args.output:
        args.output.write_text(md)
    else:
        print(md)
    if args.png:
        chart(data, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
