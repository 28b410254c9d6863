"""The README's speed table from the JSON of ``python -m fastrnn bench --json FILE``.

    python benchmarks/readme_table.py grid.json [--peers torch,jax]

One row per (cell, shape), inference and training side by side: fastrnn's time, the ratio
against each peer (peer time / fastrnn time, same run; "—" where the peer does not run
that pass), the shares of the sgemm rate and of the FMA peak, and a mark where the faster
peer beats fastrnn. A summary line per peer follows the table. ``--peers`` keeps only
those peers (for the faster-peer line too), e.g. the peers that a capped run could cap.
"""
import json
import math
import sys


def _fmt_ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def table(data, only=None):
    records = data["records"]
    peers = [p for p in ("torch", "jax", "onnxruntime")
             if any(p in r.get("peers", {}) for r in records) and (only is None or p in only)]
    rows = {}
    for r in records:
        key = (r["cell"], f"{r['T']}x{r['B']}x{r['H']}")
        rows.setdefault(key, {})[r["pass"]] = r
    head = ["cell", "T x B x I=H"]
    for pass_ in ("inference", "training step"):
        head += [f"{pass_} ms"] + [f"vs {p}" for p in peers] + ["% of sgemm", "% of FMA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best_ratios = {p: [] for p in peers + ["best"]}
    for (cell, shape), passes in rows.items():
        cells = [cell, shape]
        for pass_ in ("inference", "training"):
            r = passes.get(pass_)
            if r is None or r["fastrnn"].get("status") != "ok":
                cells += ["-"] * (3 + len(peers))
                continue
            ratios = []
            cells.append(_fmt_ms(r["fastrnn"]["best_s"]))
            for p in peers:
                st = r["peers"].get(p, {})
                if st.get("status") == "ok":
                    ratios.append(st["ratio"])
                    best_ratios[p].append(st["ratio"])
                    cells.append(f"{st['ratio']:.2f}x")
                elif st.get("status") == "unsupported":
                    cells.append("—")
                else:
                    cells.append(st.get("status", "-"))
            share = f"{100 * r['gemm']['share']:.0f}%"
            if ratios:
                best_ratios["best"].append(min(ratios))
                if min(ratios) < 1.0:
                    share += " ✗"
            cells.append(share)
            fma = r.get("fma") or {}
            cells.append(f"{100 * fma['share']:.0f}%" if fma.get("share") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for p, values in best_ratios.items():
        if values:
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            below = sum(v < 1.0 for v in values)
            name = "the faster peer per point" if p == "best" else p
            lines.append(f"- against {name}: geometric mean {geo:.2f}x, lowest {min(values):.2f}x,"
                         f" {below} of {len(values)} points below 1.0x")
    return "\n".join(lines)


if __name__ == "__main__":
    only = None
    if "--peers" in sys.argv:
        only = sys.argv[sys.argv.index("--peers") + 1].split(",")
    with open(sys.argv[1]) as f:
        print(table(json.load(f), only))
