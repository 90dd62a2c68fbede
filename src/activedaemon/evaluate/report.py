"""report.html: the demo's tables and figures in one self-contained page (images inlined)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

# The paper's headline figures (CIFAR-10, ResNet-18, GPU) to set ours against.
PAPER_CIFAR10 = {
    "A_or": 93.41,
    "A_od": -1.05,
    "A_pd": 81.06,
    "psnr": 32.05,
    "ssim": 0.944,
    "lpips": 0.0027,
    "A_td_gaussian": 10.73,
    "A_td_mismatched": 12.54,
}
ROWS = [
    ("A_or", "clean model, clean test images (%)"),
    ("A_ad", "protected model, authorized test images (%)"),
    ("A_ud", "protected model, clean test images (%)"),
    ("A_od", "A_ad - A_or (points)"),
    ("A_pd", "A_ad - A_ud (points)"),
    ("A_dec", "message bits decoded (%)"),
    ("A_td_gaussian", "Gaussian fake tokens of the real tokens' L2 (%)"),
    ("A_td_mismatched", "token made for another image (%)"),
    ("psnr", "PSNR, authorized vs clean (dB)"),
    ("ssim", "SSIM"),
    ("ergas", "ERGAS"),
    ("lpips", "LPIPS"),
]

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
td, th { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.9rem; }
"""


def _fmt(value) -> str:
    if value is None:
        return "null"
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1 else f"{value:.2f}"


def embedded_image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" width="100%">'


def thieves_section(audit: dict | None, shipped_encoder: bool) -> str:
    """The report's "What a thief gets without a token": the quick thief audit
    (activedaemon.attacks.audit), each thief beside its honest alternative, and the verdict."""
    if audit is None:
        return (
            "<h2>What a thief gets without a token</h2><p><b>Not measured</b> for this report: "
            "A_ud alone does not say that the model is locked (run <code>activedaemon attack "
            "dormancy</code> and <code>activedaemon attack wake</code>).</p>"
        )
    head = ["thief", "holds", "labels (%)", "budget (x token)", "thief (%)", "alternative",
            "alternative (%)", "gain"]  # fmt: skip
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for k in head) + "</tr>"
        for r in audit["rows"]
    )
    shipped = (
        "<p><b>The encoder is the key, and this one is public:</b> it ships with the package, so "
        "anyone who installs it can make tokens that wake this model for any id. Train your own "
        "encoder (<code>activedaemon train-encoder</code>) for a model you deploy and keep it "
        "like a key.</p>"
        if shipped_encoder
        else ""
    )
    return f"""<h2>What a thief gets without a token</h2>
<p>A thief who holds the weights, and no token, against the honest alternative with the same
means (chance, random weights of the same architecture, training from scratch or a kNN on the
same labels), measured in this run. A_ud ({_fmt(audit["A_ud"])} %) only says what the model
answers to clean queries as they are.</p>
<p><b>{html.escape(audit["verdict"])}</b></p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{rows}</table>
<p class="note">Budgets are multiples of a real token's median L2 (per-query) or L-inf and L2
(universal keys); a budget above 1 is shown, not counted. {audit["seconds"]} s.</p>
{shipped}"""


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_report(
    results: dict,
    out: str | Path,
    figures: list[Path] = (),
    notes: list[str] = (),
    thieves: str = "",
):
    """Write ``report.html`` from a results dict (see evaluate_protection), figure files and
    the thieves' section (``thieves_section``)."""
    out = Path(out)
    rows = "".join(
        f"<tr><td>{key}</td><td>{html.escape(label)}</td><td>{_fmt(results.get(key))}</td>"
        f"<td>{_fmt(PAPER_CIFAR10.get(key)) if key in PAPER_CIFAR10 else ''}</td></tr>"
        for key, label in ROWS
    )
    users = "".join(
        f"<tr><td><code>{html.escape(r['user_id'])}</code></td><td>{r['alphabet']}</td>"
        f"<td>{_fmt(r['A_ad'])}</td><td>{_fmt(r['A_dec'])}</td></tr>"
        for r in results.get("per_user", [])
    )
    lpips_note = (
        f"<p class='note'>LPIPS is null: {html.escape(results['lpips_reason'])}</p>"
        if results.get("lpips") is None and results.get("lpips_reason")
        else ""
    )
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ActiveDaemon report</title><style>{STYLE}</style></head>
<body>
<h1>ActiveDaemon report</h1>
<p>Data set <b>{html.escape(str(results.get("dataset")))}</b>, {results.get("test_images")} test
images, seed {results.get("seed")}, commit <code>{html.escape(str(results.get("commit")))}</code>.
Model <code>{html.escape(str(results.get("model")))}</code>, encoder
<code>{html.escape(str(results.get("encoder")))}</code>.</p>
<h2>Protection (Tables I, III, IV, VII)</h2>
<table><tr><th>metric</th><th>meaning</th><th>measured</th><th>paper, CIFAR-10</th></tr>
{rows}</table>
{lpips_note}
{"".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)}
{thieves}
<h2>Per user (Table VIII analogue)</h2>
<table><tr><th>user id</th><th>alphabet</th><th>A_ad</th><th>A_dec</th></tr>{users}</table>
<h2>Figures</h2>
{"".join(f"<h3>{html.escape(p.stem)}</h3>{embedded_image(p)}" for p in figures if p.is_file())}
</body></html>
"""
    out.write_text(body)
    return out


def _table(rows: list[dict] | None) -> str:
    """An attack's detail table (rows with the same keys), or nothing."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_attack_report(results: dict, out: str | Path) -> Path:
    """Write the attack suite's ``report.html``: one table row per attack (threat model, target,
    verdict, headline figures) and every figure, inlined."""
    out = Path(out)
    base = results["baseline"]
    rows, sections = [], []
    for name, r in results["attacks"].items():
        figures = {
            k: v for k, v in r["metrics"].items() if k not in ("A_ad", "A_ud") and v is not None
        }
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td><b>{r['verdict']}</b></td>"
            f"<td>{html.escape(r['target'])}</td><td style='text-align:left'>{html.escape(shown)}"
            f"</td><td>{r['seconds']}</td></tr>"
        )
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in r["notes"])
        images = "".join(embedded_image(Path(p)) for p in r["figures"] if Path(p).is_file())
        sections.append(
            f"<h3>{html.escape(name)}</h3><p class='note'><b>Threat model:</b> "
            f"{html.escape(r['threat_model'])}</p>{notes}{_table(r.get('table'))}{images}"
        )
    budget = results["token_budget"]
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ActiveDaemon attack report</title>
<style>{STYLE}</style></head><body>
<h1>ActiveDaemon attack report</h1>
<p>Data set <b>{html.escape(str(results["dataset"]))}</b>, {results["test_images"]} test images,
seed {results["seed"]}, {"fast mode, " if results["fast"] else ""}commit
<code>{html.escape(str(results["commit"]))}</code>. Without attack: A_ad {_fmt(base["A_ad"])},
A_ud {_fmt(base["A_ud"])}. Real tokens (median): L-inf {budget["linf"]:.4f},
L2 {budget["l2"]:.4f}.</p>
<table><tr><th>attack</th><th>verdict</th><th>target</th><th>figures (%)</th><th>s</th></tr>
{"".join(rows)}</table>
<p class="note">"broken" means the attack beat its target: a weakness measured, reported as it
is. "info" rows have no pass / fail target.</p>
<h2>Attacks</h2>
{"".join(sections)}
</body></html>
"""
    out.write_text(body)
    return out
