"""fastrnn's times in two runs of ``python -m fastrnn bench --json`` side by side: two builds
or settings on the same machine (run one after the other, so only approximately the same
conditions), point by point.

    python benchmarks/compare_runs.py before.json after.json

Prints one row per point (before ms, after ms, before / after: > 1 where "after" is
faster) and the geometric mean, lowest and highest ratio.
"""
import json
import math
import sys


def _points(path):
    with open(path) as f:
        data = json.load(f)
    return {(r["cell"], f"{r['T']}x{r['B']}x{r['H']}", r["pass"]): r["fastrnn"]["best_s"]
            for r in data["records"] if r["fastrnn"].get("status") == "ok"}


def compare(before, after):
    a, b = _points(before), _points(after)
    lines = ["| cell | T x B x I=H | pass | before ms | after ms | before / after |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for key in a:
        if key in b:
            ratio = a[key] / b[key]
            ratios.append(ratio)
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {a[key] * 1e3:.4g} | "
                         f"{b[key] * 1e3:.4g} | {ratio:.3f} |")
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    lines.append("")
    lines.append(f"{len(ratios)} points: geometric mean {geo:.3f}, lowest {min(ratios):.3f}, "
                 f"highest {max(ratios):.3f}, below 1.0: {sum(r < 1.0 for r in ratios)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(compare(sys.argv[1], sys.argv[2]))
