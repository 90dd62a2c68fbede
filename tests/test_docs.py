"""The documentation is checked like code: every command it shows parses, every relative link and
image resolves, the README's Python snippets run, the generated pages are up to date, and the
site builds offline with ``mkdocs build --strict``."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from activedaemon.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# The history page is the README as it stood at commit 511930d: an archive, not instructions.
ARCHIVE = {DOCS / "development" / "history.md"}
# Generated from the parser's own --help text: nothing to check against itself.
GENERATED_HELP = {DOCS / "reference" / "cli.md"}


def markdown_files() -> list[Path]:
    files = [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
    return files + sorted(p for p in DOCS.rglob("*.md") if p not in ARCHIVE)


def fenced_blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    pattern = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
    return [m.group(2) for m in pattern.finditer(text) if m.group(1) in languages]


def shell_commands(text: str) -> list[str]:
    """Command lines from shell code blocks and `inline code` that starts with a command."""
    lines = []
    for block in fenced_blocks(text, ("bash", "sh", "console", "")):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`((?:activedaemon|python3? benchmarks/)[^`]*)`", text)
    commands = []
    for line in lines:
        line = re.sub(r"\s#.*$", "", line).strip()
        for part in re.split(r"&&|\|\||;|\s\|\s|\s&$", line):
            commands.append(part.strip())
    return [c for c in commands if c]


def cli_invocations(command: str) -> list[str] | None:
    """The argv after `activedaemon` (also via torchrun or python -m), else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for i, word in enumerate(words):
        if word == "activedaemon":
            return words[i + 1 :]
        if word == "activedaemon.cli" and i > 0 and words[i - 1] == "-m":
            return words[i + 1 :]
    return None


def documented_cli_commands() -> list[tuple[Path, list[str]]]:
    found = []
    for path in markdown_files():
        if path in GENERATED_HELP:
            continue
        for command in shell_commands(path.read_text()):
            argv = cli_invocations(command)
            if argv and not argv[0].isupper():  # `activedaemon COMMAND --help`: a placeholder
                found.append((path, argv))
    return found


def resolve(argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand path named by argv and the parser that owns its flags."""
    parser, path = build_parser(), []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser, path = subs[0].choices[word], [*path, word]
    return path, parser


def test_docs_show_cli_commands():
    commands = documented_cli_commands()
    assert len(commands) > 30, "the command extraction found too little to be trusted"
    shown = {tuple(resolve(argv)[0]) for _, argv in commands}
    for must in [("demo",), ("protect",), ("serve",), ("attack",), ("users", "add")]:
        assert must in shown


@pytest.mark.parametrize(
    "path,argv",
    documented_cli_commands(),
    ids=lambda v: v.name if isinstance(v, Path) else " ".join(v)[:60],
)
def test_documented_cli_command_has_known_flags(path, argv):
    subpath, parser = resolve(argv)
    if argv and argv[0] in ("--help", "--version"):
        return
    assert subpath, f"{path.name}: `activedaemon {' '.join(argv)}` names no command"
    known = {s for a in parser._actions for s in a.option_strings}
    for word in argv[len(subpath) :]:
        flag = word.strip("[]").split("=", 1)[0]
        if flag.startswith("-") and flag not in ("-", "--") and not re.fullmatch(r"-\d.*", flag):
            assert flag in known, (
                f"{path.name}: `activedaemon {' '.join(argv)}` uses {flag}, which "
                f"`activedaemon {' '.join(subpath)}` does not know; it knows {sorted(known)}"
            )
    # And the command's --help runs.
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*subpath, "--help"])
    assert done.value.code == 0
    assert "usage: activedaemon" in out.getvalue()


def documented_benchmark_commands() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for path in markdown_files():
        for command in shell_commands(path.read_text()):
            m = re.search(r"python3? (benchmarks/\w+\.py)(.*)", command)
            if m:
                words = re.findall(r"(?<!\S)\[?(--[\w-]+)", m.group(2))
                flags.setdefault(m.group(1), set()).update(words)
    return flags


@pytest.mark.parametrize("script,flags", sorted(documented_benchmark_commands().items()))
def test_documented_benchmark_command_has_known_flags(script, flags):
    assert (ROOT / script).is_file(), f"the docs run {script}, which does not exist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout), (
            f"the docs pass {flag} to {script}, whose --help does not list it"
        )


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]+src=\"([^\"]+)\"")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(path):
    text = path.read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # code is not a link
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links that resolve to nothing: {broken}"


def test_readme_is_short_and_keeps_its_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = fenced_blocks(text, ("bash",))[0].splitlines()
    assert first[0].startswith("apt-get update && apt-get install -y dataset-fashion-mnist")
    assert first[0].endswith("activedaemon demo --out demo")
    assert first[1] == "python3 -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^python3 -m pytest -q$", ci, re.M), "CI must run the README's test command"
    assert "<!-- headline:start -->" in text and "<!-- headline:end -->" in text


# Pages whose Python blocks run as written. Left out: the service guide (needs a server) and the
# lock audit (a full-size attack).
RUNNABLE = [
    README,
    DOCS / "getting-started.md",
    DOCS / "guides" / "tokens.md",
    DOCS / "guides" / "protect.md",
    DOCS / "guides" / "datasets.md",
]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_python_snippets_run(page, tiny_protected, tmp_path, monkeypatch):
    """Each ```python block of the page, as written; `demo/protected` and `runs/protected` are
    a toy protected model."""
    for folder in ("demo", "runs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "protected").symlink_to(Path(tiny_protected).resolve())
    monkeypatch.chdir(tmp_path)
    blocks = fenced_blocks(page.read_text(), ("python",))
    assert blocks
    for block in blocks:
        exec(compile(block, page.name, "exec"), {"__name__": "docs_snippet"})


def test_generated_pages_are_up_to_date():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "benchmarks/write_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, (
        "generated docs are out of date; run `python benchmarks/write_docs.py`:\n"
        + done.stdout[-3000:]
    )


def test_site_builds_strict_and_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    external = re.compile(
        r"<(?:script|img|iframe)[^>]+src=\"(?:https?:)?//|"
        r"<link[^>]+href=\"(?:https?:)?//[^\"]*\"[^>]*>|fonts\.googleapis|fonts\.gstatic"
    )
    for page in site.rglob("*.html"):
        text = page.read_text()
        hits = [m.group(0) for m in external.finditer(text)]
        # Links to other sites are fine; loading anything from one is not.
        hits = [h for h in hits if "<link" not in h or "stylesheet" in h or "preconnect" in h]
        assert not hits, f"{page.relative_to(site)} loads from outside the site: {hits[:3]}"
        assert 'class="mermaid"' not in text  # Material would fetch mermaid from a CDN
