"""The quick thief audit of a protected model: what a thief who holds the weights and no token
gets, each thief beside its honest alternative, in a few CPU minutes (the demo's report section
"What a thief gets without a token"). The full audits are the ``dormancy`` and ``wake`` attacks
with their defaults; this one runs both with fewer budgets and one label share, each search
still run to its full number of steps."""

from __future__ import annotations

from activedaemon.attacks.base import AttackContext, run_attack
from activedaemon.runs import release_freed_memory

# One label share (1 % of the training labels), budgets 0.5 x and 1 x a token, no source-free
# adaptation: what fits beside the demo's training on two cores.
QUICK_DORMANCY = {"percents": (1.0,), "pools": (1,), "finetune_lrs": (0.05,), "random_inits": 2}
QUICK_WAKE = {
    "budgets": (0.5, 1.0),
    "percents": (),
    "queries": 500,
    "restarts": 1,
    "key_steps": 200,
    "unlabelled": 1000,
    "shot_epochs": 0,
}

# What each thief of the audit holds besides the weights.
HOLDS = {
    "runner-up label": "nothing",
    "true label in runner-up top 3": "nothing",
    "per-query wake-up": "nothing (not even data)",
    "label-free universal key": "unlabelled images",
    "universal key, cross-entropy": "labelled images",
    "source-free adaptation (SHOT)": "unlabelled images",
    "full fine-tuning": "labelled images",
    "BatchNorm re-estimated, output": "unlabelled images",
}


def thief_audit(ctx: AttackContext, quick: bool = True) -> dict:
    """Run the passive (``dormancy``) and active (``wake``) thieves and return {"rows": one row
    per thief: thief, holds, labels (%), budget, thief (%), alternative, alternative (%), gain;
    "largest": the row with the largest gain; "verdict": one line}. ``quick`` uses the settings
    above; otherwise each attack's defaults."""
    dormancy = run_attack("dormancy", ctx, **(QUICK_DORMANCY if quick else {}))
    release_freed_memory()  # the passive thieves' models and features, before the searches
    wake = run_attack("wake", ctx, **(QUICK_WAKE if quick else {}))
    rows = []
    for row in dormancy.table:
        if row["thief"].startswith("linear probe"):
            continue  # the best probe is one row below
        rows.append({**row, "budget (x token)": None})
    probes = [r for r in dormancy.table if r["thief"].startswith("linear probe")]
    if probes:
        best = max(probes, key=lambda r: r["gain"])
        rows.append(
            {**best, "thief": f"best linear probe ({best['stage']})", "budget (x token)": None}
        )
    rows += [{**row, "stage": None} for row in wake.table]
    for row in rows:
        row["holds"] = HOLDS.get(row["thief"], "labelled images")
    # A change larger than a real token's is shown but not counted.
    counted = [r for r in rows if (r["budget (x token)"] or 0) <= 1]
    largest = max(counted, key=lambda r: r["gain"])
    verdict = (
        f"largest gain of a thief without a token: {largest['thief']}"
        + (f" at {largest['budget (x token)']:g} x a token" if largest["budget (x token)"] else "")
        + f", {largest['thief (%)']:.1f} % against {largest['alternative (%)']:.1f} % "
        f"({largest['alternative']}): {largest['gain']:+.1f} points"
    )
    return {
        "rows": rows,
        "largest": largest,
        "verdict": verdict,
        "holds": dormancy.verdict == "holds" and wake.verdict == "holds",
        "A_ud": ctx.baseline["A_ud"],
        "seconds": round(dormancy.seconds + wake.seconds, 1),
        "params": {"dormancy": dormancy.params, "wake": wake.params},
    }
