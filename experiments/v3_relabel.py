"""What classifier v3 changes in the v2 result files: v3's rule applied to the numbers they hold.

The stores behind ``experiments/results/*.json`` (classifier v2) are not kept, so their runs cannot
be relabelled by ``grokray classify``. Every v2 row holds the numbers v3 decides on: the behaviour
(first word of the detail), the delay ``t_generalize / t_memorize``, the held target level, the best
shortcut and the interchange rate. This applies v3's rule to them (``grokray.verdict.VerdictParams``:
grokking needs a delay > ``grokking_delay``; the shortcut bar is ``s + shortcut_excess x (1 - s)``;
mediated at ``interchange >= interchange_min``) and lists every label that changes, and why. The
bridge-carry test did not exist then: the interchange criterion decides here, as it does by default.

    python -m experiments.v3_relabel      # writes experiments/results/v3_relabel.json, prints the table
"""
from __future__ import annotations

import json
from pathlib import Path

from grokray.verdict import GENERALIZED, VerdictParams

ROOT = Path(__file__).resolve().parents[1]
V2_FILES = ("calibration_generator_v2.json", "calibration_v1_relabelled.json", "regimes_dose.json",
            "regimes_noncausal.json", "regimes_shortcut.json")


def v3_label(row: dict, p: VerdictParams = VerdictParams()) -> tuple[str, str]:
    """``(label, why)`` by v3's rule on a v2 row's numbers."""
    behaviour = (row.get("detail") or "").split(",")[0].strip()
    if behaviour not in GENERALIZED:
        return "no_grokking", behaviour
    delay = row.get("delay_ratio")
    late = behaviour == "grokking" and delay is not None and delay > p.grokking_delay
    level, s = row.get("final_target_level"), row.get("shortcut_best")
    if level is not None and s is not None and level < p.shortcut_bar(s):   # the verdict's detail says this first
        return "no_grokking", f"shortcut (held {level:.2f} < {p.shortcut_bar(s):.2f}, delay {delay:.2f})"
    if not late:
        why = "unmemorized" if behaviour == "unmemorized" else f"comprehension (delay {delay:.2f} <= {p.grokking_delay:g})"
        return "no_grokking", why
    ic = row.get("interchange")
    if ic is None:
        return "true_grokking", "no interchange measured: behaviour only"
    if ic >= p.interchange_min:
        return "true_grokking", f"interchange {ic:.2f} >= {p.interchange_min:g}"
    return "fake_grokking", f"interchange {ic:.2f} < {p.interchange_min:g}"


def main() -> None:
    out, lines = [], ["| file | regime | model | seed | v2 label (detail) | v3 label | why |", "|---|---|---|---|---|---|---|"]
    for name in V2_FILES:
        rows = json.loads((ROOT / "experiments" / "results" / name).read_text())["rows"]
        for r in rows:
            label, why = v3_label(r)
            rec = {"file": name, "regime": r.get("regime"), "model": r.get("model"), "seed": r.get("seed"),
                   "v2_label": r.get("label"), "v2_detail": r.get("detail"), "v3_label": label, "why": why,
                   "changed": label != r.get("label")}
            out.append(rec)
            if rec["changed"]:
                lines.append(f"| {name} | {rec['regime']} | {rec['model']} | {rec['seed']} | {rec['v2_label']} "
                             f"({rec['v2_detail']}) | **{label}** | {why} |")
    n_changed = sum(r["changed"] for r in out)
    summary = f"{n_changed} of {len(out)} v2 labels change under v3's rule"
    (ROOT / "experiments" / "results" / "v3_relabel.json").write_text(json.dumps(
        {"summary": summary, "rows": out, "table_markdown": "\n".join(lines),
         "command": "python -m experiments.v3_relabel"}, indent=1))
    print(summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
