"""The compare outputs: compare.csv, samples.png (Fig. 3 style), pruning.png (Fig. 7/8 style) and
report.html with the scheme table, the attack table, skipped attacks and the figures."""

from __future__ import annotations

import csv
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from activedaemon.attacks.figures import save_image_rows  # noqa: E402
from activedaemon.evaluate.report import STYLE, embedded_image  # noqa: E402

COLUMNS = (
    "scheme", "key_in", "A_or", "A_ad", "A_ud", "A_od", "A_pd", "A_fk", "psnr", "ssim", "ergas",
    "lpips", "params", "key_params", "flops", "train_seconds",
)  # fmt: skip

N_SAMPLES = 6
# The figures each attack's verdict rests on, shown in the report's attack table; an attack not
# listed here shows all its scalar metrics.
HEADLINES = {
    "pruning": ("max_A_ud", "A_ad_0.5", "A_ad_0.8"),
    "gaussian": ("A_td_gaussian_l2", "A_td_gaussian_l2_linf"),
    "finetune": ("A_ud_p1", "A_ud_p5", "A_ud_p10", "max_gain_over_scratch"),
    "extraction": ("substitute_outsider_clean", "substitute_insider_clean"),
}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 and value != 0 else f"{value:.2f}"
    return str(value)


def headline(attack: str, result: dict) -> str:
    """'key value, ...' for the metrics that decide ``attack``'s verdict."""
    metrics = result["metrics"]
    keys = HEADLINES.get(attack) or [k for k, v in metrics.items() if isinstance(v, (int, float))]
    return ", ".join(f"{k} {_fmt(metrics[k])}" for k in keys if k in metrics)


def write_table(results: dict, path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({k: results["clean"].get(k) for k in COLUMNS})
        for entry in results["schemes"].values():
            writer.writerow({k: entry["row"].get(k) for k in COLUMNS})
    return path


def save_samples(contexts: dict, path: Path) -> Path:
    """Clean test images, then each image-changing scheme's authorized images and |x_a - x| x5."""
    first = next(iter(contexts.values()))
    rows = {"clean": first.test_x[:N_SAMPLES]}
    for name, ctx in contexts.items():
        auth = ctx.authorized[:N_SAMPLES]
        if (auth - ctx.test_x[:N_SAMPLES]).abs().max() == 0:
            continue  # the key is in the weights: queries are the clean images
        rows[f"{name}: authorized"] = auth
        rows[f"{name}: |x_a - x| x5"] = ((auth - ctx.test_x[:N_SAMPLES]).abs() * 5).clamp(0, 1)
    return save_image_rows(rows, path)


def save_pruning(results: dict, path: Path) -> Path | None:
    """A_ad (solid) and A_ud (dashed) against the pruning rate, one colour per scheme."""
    curves = {
        n: e["attacks"]["pruning"]["curve"]
        for n, e in results["schemes"].items()
        if "pruning" in e["attacks"]
    }
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        x = [100 * r for r in curve["x_values"]]
        ax.plot(x, curve["series"]["A_ad"], "-o", color=colour, ms=3, label=f"{name} A_ad")
        ax.plot(x, curve["series"]["A_ud"], "--", color=colour, label=f"{name} A_ud")
    ax.set_xlabel("pruning rate (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_compare_outputs(results: dict, contexts: dict, out: Path) -> dict[str, str]:
    table = write_table(results, out / "compare.csv")
    samples = save_samples(contexts, out / "samples.png")
    pruning = save_pruning(results, out / "pruning.png")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = [results["clean"]] + [e["row"] for e in results["schemes"].values()]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in COLUMNS) + "</tr>"
        for r in rows
    )
    items, attack_rows = [], []
    for name, entry in results["schemes"].items():
        attack_rows += [
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(a)}</td>"
            f"<td>{html.escape(r['verdict'])}</td><td>{html.escape(headline(a, r))}</td>"
            f"<td>{html.escape(r['target'])}</td></tr>"
            for a, r in entry["attacks"].items()
        ]
        skipped = "; ".join(f"{a} ({why})" for a, why in entry["skipped"].items()) or "none"
        extra = ", ".join(f"{k} = {_fmt(v)}" for k, v in entry["extra"].items())
        na = ", ".join(a for a in entry["not_applicable"] if a not in entry["skipped"])
        if na:
            skipped += f"; also not applicable (not requested): {na}"
        items.append(
            f"<li><b>{html.escape(name)}</b>: skipped attacks: "
            f"{html.escape(skipped)}. {html.escape(extra)}</li>"
        )
    figures = "".join(embedded_image(p) for p in (samples, pruning) if p is not None)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Compared schemes</title>
<style>{STYLE}</style></head><body><h1>Compared schemes ({html.escape(results["dataset"])})</h1>
<p class="note">seed {results["seed"]}, commit {html.escape(results["commit"])}, preset
{html.escape(results["preset"])}{" (fast)" if results["fast"] else ""}, {results["test_images"]}
test images. Accuracies in %; A_fk: forged key (Gaussian fake token of the real token's L2, random
passport, wrong ChaoW key). PSNR/SSIM/ERGAS only where a scheme changes images; LPIPS is empty
where its backbone weights cannot be loaded (offline).</p>
<table><tr>{head}</tr>{body}</table>
<h2>Attacks</h2>
<table><tr><th>scheme</th><th>attack</th><th>verdict</th><th>measured</th><th>target</th></tr>
{"".join(attack_rows)}</table><ul>{"".join(items)}</ul>{figures}</body></html>
"""
    report = out / "report.html"
    report.write_text(page)
    paths = {"table": table, "samples": samples, "pruning": pruning, "report": report}
    return {k: str(v) for k, v in paths.items() if v is not None}
