"""What a Table-1 row shows: the paper's pattern in three parts, a verdict, and the row over several seeds.

The paper's pattern, per row (Levy et al.): the undefended victim falls to the original attack; the defence
holds against that attack; the adaptive attack breaks the defence. Each part is a yes or no with its numbers:

- victim falls: the original attack without the defence leaves at most the paper's value + ``SLACK`` points;
- defence holds: with the defence, the original attack leaves at least ``HELD_BY`` points more than without;
- adaptive breaks: the adaptive attack leaves at most max(paper's value, 2) + ``SLACK`` points and, where the
  defence held, at least ``DROP`` points less than the original attack with the defence.

The verdict only blames the victim ("resists this eps") when the floor (the converged strongest attack on the
undefended victim, see ``floor.py``) stays above the bound the adaptive attack is held to: then no attack on
the defended system could get there either. Otherwise an unbroken defence *holds* at this budget, and the
verdict says by how much it stays above the floor. A defence the adaptive attack takes to the paper's level is
broken even when the 20-point drop is missing because it held only a little against the original attack; the
verdict says so, and the pattern's third part stays "no".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SLACK = 15.0  # points of tolerance on the paper's value: synthetic stand-in data, scaled-down networks
ADAPTIVE_SLACK = 10.0
HELD_BY = 10.0
DROP = 20.0
# Table 1's four columns, in the paper's order (results.json keys)
COLUMNS = ("clean", "original_attack_no_defence", "original_attack_with_defence", "adaptive_attack_with_defence")


def adaptive_bound(r: Mapping[str, Any]) -> float:
    """The value the adaptive attack must reach: max(paper's value, 2) + ADAPTIVE_SLACK."""
    return max(float(r["paper"]["adaptive_attack_with_defence"]), 2.0) + ADAPTIVE_SLACK


def paper_pattern(r: Mapping[str, Any]) -> dict[str, Any]:
    """The three parts of the paper's pattern for one row, and whether the row meets the paper's bars as a
    whole (clean within SLACK, the pattern, MGM's detection AUROC <= 50, the floor converged)."""
    p = r["paper"]
    no_def, with_def = float(r["original_attack_no_defence"]), float(r["original_attack_with_defence"])
    adaptive, bound = float(r["adaptive_attack_with_defence"]), adaptive_bound(r)
    held = with_def >= no_def + HELD_BY
    paper_held = float(p["original_attack_with_defence"]) >= float(p["original_attack_no_defence"]) + HELD_BY
    drop = with_def - adaptive
    breaks = adaptive <= bound and (not held or drop >= DROP)
    falls = no_def <= float(p["original_attack_no_defence"]) + SLACK
    parts: dict[str, dict[str, Any]] = {
        "victim_falls": {"ok": falls, "value": no_def,
                         "at_most": float(p["original_attack_no_defence"]) + SLACK},
        "defence_holds": {"ok": held, "gain": round(with_def - no_def, 2), "at_least": HELD_BY,
                          "paper_held": paper_held},
        "adaptive_breaks": {"ok": breaks, "value": adaptive, "at_most": bound, "drop": round(drop, 2),
                            "drop_at_least": DROP if held else None},
    }
    checks = {
        "clean": float(r["clean"]) >= float(p["clean"]) - SLACK,
        "victim_falls": falls,
        "holds_where_paper_held": held or not paper_held,
        "adaptive_breaks": breaks,
    }
    t2 = r.get("table2")
    if t2 and t2.get("metric") == "AUROC":
        checks["detection_auroc_at_most_50"] = float(t2["adaptive_attack_with_defence"]) <= 50.0
    floor = r.get("floor")
    if isinstance(floor, Mapping):
        checks["floor_converged"] = bool(floor.get("converged"))
    return {"parts": parts, "checks": checks, "met": all(checks.values())}


def verdict(r: Mapping[str, Any]) -> str:
    """What the row says about its defence, from its numbers (see the module docstring)."""
    pat = r.get("pattern") or paper_pattern(r)
    ab = pat["parts"]["adaptive_breaks"]
    if ab["ok"]:
        return "broken"
    if ab["value"] <= ab["at_most"]:  # down to the paper's level, but the defence never held 20 points to lose
        gain = pat["parts"]["defence_holds"]["gain"]
        return (f"broken (the adaptive attack reaches the paper's level; the defence held only {gain:+.1f} points "
                "against the original attack)")
    bound = adaptive_bound(r)
    floor = r.get("floor")
    if isinstance(floor, Mapping) and floor.get("converged") and float(floor["value"]) > bound:
        return f"victim resists this eps (converged floor {float(floor['value']):.1f} > {bound:g})"
    if isinstance(floor, Mapping):
        gap = float(r["adaptive_attack_with_defence"]) - float(floor["value"])
        return f"defence holds at this budget ({gap:+.1f} points above the floor)"
    return "defence holds at this budget"


def pattern_words(r: Mapping[str, Any]) -> list[str]:
    """The three parts as the report's words, each yes or no with its numbers."""
    parts = (r.get("pattern") or paper_pattern(r))["parts"]
    vf, dh, ab = parts["victim_falls"], parts["defence_holds"], parts["adaptive_breaks"]
    yes = {True: "yes", False: "**no**"}
    held_note = "" if dh["paper_held"] else "; it did not in the paper either"
    drop = f", {ab['drop']:.1f} below the original attack with defence" if ab["drop_at_least"] else ""
    return [f"victim falls: {yes[vf['ok']]} ({vf['value']:.1f} <= {vf['at_most']:g})",
            f"defence holds: {yes[dh['ok']]} ({dh['gain']:+.1f} points over no defence, >= {dh['at_least']:g} "
            f"wanted{held_note})",
            f"adaptive breaks: {yes[ab['ok']]} ({ab['value']:.1f} <= {ab['at_most']:g}{drop})"]


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(sum(values) / len(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def across_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One row over several seeds: Table 1's columns (and Table 2's) as the mean, with {"mean", "min", "max",
    "values"} per column under "seeds", each seed's verdict, and one verdict — or, when the seeds disagree,
    "differs between seeds" with each seed's."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out: dict[str, Any] = {k: v for k, v in first.items()}
    spread: dict[str, Any] = {}
    for c in COLUMNS:
        vals = [float(per_seed[s][c]) for s in seeds]
        spread[c] = {**_spread(vals), "values": dict(zip(seeds, vals, strict=True))}
        out[c] = spread[c]["mean"]
    if "table2" in first:
        out["table2"] = dict(first["table2"])
        for c in COLUMNS:
            vals = [float(per_seed[s]["table2"][c]) for s in seeds]
            spread[f"table2.{c}"] = {**_spread(vals), "values": dict(zip(seeds, vals, strict=True))}
            out["table2"][c] = spread[f"table2.{c}"]["mean"]
    verdicts = {s: verdict(per_seed[s]) for s in seeds}
    kinds = {v.split(" (")[0] for v in verdicts.values()}
    out["seeds"] = {"seeds": seeds, "columns": spread, "verdicts": verdicts,
                    "patterns": {s: per_seed[s].get("pattern") or paper_pattern(per_seed[s]) for s in seeds}}
    out["verdict"] = kinds.pop() if len(kinds) == 1 else "differs between seeds"
    out["pattern"] = paper_pattern(out)
    out["pattern"]["met"] = all(out["seeds"]["patterns"][s]["met"] for s in seeds)
    return out
