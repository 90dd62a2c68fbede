"""Whether a results page's artefact is older than the code it measures.

A page written by ``benchmarks/write_docs.py`` carries a block

    <!-- status:start commit=SHA paths=src/a,src/b -->
    ...one line of status...
    <!-- status:end -->

This module computes that line from git: the artefact's commit against the commits since then
that changed the measured paths. It is also an MkDocs hook (``hooks:`` in mkdocs.yml): at build
time every such block is rewritten against the checkout being built, so the site never calls an
artefact current when the code under it has changed since.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"<!-- status:start commit=(?P<commit>\S*) paths=(?P<paths>\S*) -->\n.*?<!-- status:end -->",
    re.S,
)


def _git(*args: str) -> tuple[int, str]:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return 1, ""
    return done.returncode, done.stdout.strip()


def status_line(commit: str, paths: list[str]) -> str:
    """One sentence: is the artefact made at ``commit`` current for ``paths`` at HEAD?"""
    dirty = commit.endswith("+dirty")
    sha = commit.removesuffix("+dirty")
    if not sha or sha == "unknown":
        return "**Status: unknown.** The artefact does not record the commit that produced it."
    note = " It was made from a working tree with uncommitted changes." if dirty else ""
    code, _ = _git("cat-file", "-e", f"{sha}^{{commit}}")
    if code != 0:
        return (
            f"**Status: cannot check.** Commit `{sha[:7]}` is not in this checkout's history "
            f"(a shallow clone, or another branch).{note}"
        )
    code, out = _git("log", "--format=%h", f"{sha}..HEAD", "--", *paths)
    if code != 0:
        return f"**Status: cannot check** (git failed).{note}"
    changes = [line for line in out.splitlines() if line]
    where = ", ".join(f"`{p}`" for p in paths)
    if not changes:
        return f"**Status: current.** No commit since `{sha[:7]}` changed {where}.{note}"
    latest = changes[0]
    return (
        f"**Status: STALE.** This artefact is older than the code it measures: {len(changes)} "
        f"commit(s) since `{sha[:7]}` changed {where} (latest: `{latest}`). Rerun the command "
        f"above and `python benchmarks/write_docs.py` to refresh it.{note}"
    )


def status_block(commit: str, paths: list[str]) -> str:
    return (
        f"<!-- status:start commit={commit} paths={','.join(paths)} -->\n"
        f"{status_line(commit, paths)}\n<!-- status:end -->"
    )


def refresh(markdown: str) -> str:
    """Every status block of a page, recomputed against the current checkout."""
    return BLOCK.sub(
        lambda m: status_block(m["commit"], [p for p in m["paths"].split(",") if p]), markdown
    )


def without_status(markdown: str) -> str:
    """The page with its status lines blanked (they depend on HEAD, not on the artefact)."""
    return BLOCK.sub(lambda m: f"<!-- status commit={m['commit']} paths={m['paths']} -->", markdown)


def on_page_markdown(markdown: str, **_kwargs) -> str:  # MkDocs hook
    return refresh(markdown) if "<!-- status:start" in markdown else markdown
