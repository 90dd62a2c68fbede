import json
import random
import subprocess
import sys

import pytest

from activedaemon.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "activedaemon.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "datasets" in result.stdout and "id" in result.stdout


COMMANDS = [
    ["datasets"], ["photos"], ["id"], ["id", "encode"], ["id", "decode"], ["train-encoder"],
    ["eval-tokens"], ["token"], ["identify"], ["protect"], ["train-clean"], ["evaluate"], ["demo"],
    ["sweep"], ["attack"], ["compare"], ["serve"], ["query"], ["users"], ["users", "add"],
    ["users", "show"],
]  # fmt: skip


@pytest.mark.parametrize("argv", COMMANDS)
def test_every_subcommand_has_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 4


def test_id_encode_then_decode_with_10_flips(capsys):
    code, out, _ = run(capsys, "id", "encode", "SRJu2W7V")
    bits = list(out.strip())
    assert code == 0 and len(bits) == 127
    for i in random.Random(0).sample(range(127), 10):
        bits[i] = "1" if bits[i] == "0" else "0"
    code, out, _ = run(capsys, "id", "decode", "".join(bits))
    assert code == 0 and out.strip() == "SRJu2W7V"


def test_id_decode_reports_none(capsys):
    code, out, err = run(capsys, "id", "decode", "0" * 127)
    assert code == 1 and out == "" and "none" in err


@pytest.mark.parametrize(
    "argv, message",
    [(["id", "encode", "abc"], "exactly 8"), (["id", "decode", "0101"], "127 characters")],
)
def test_bad_input_is_a_clear_error(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_datasets_lists_fashion_mnist(capsys, tmp_path):
    code, out, _ = run(capsys, "datasets", "--data-root", str(tmp_path))
    assert code == 0
    assert "fashion-mnist  found" in out
    assert "cifar10        missing" in out and "download=True" in out


def test_datasets_json_to_stdout_or_a_file(capsys, tmp_path):
    code, out, _ = run(capsys, "datasets", "--data-root", str(tmp_path), "--json", "-")
    rows = json.loads(out)  # '-': only the JSON on stdout
    assert code == 0 and any(r["name"] == "fashion-mnist" and r["found"] for r in rows)
    path = tmp_path / "out" / "datasets.json"
    code, out, _ = run(capsys, "datasets", "--data-root", str(tmp_path), "--json", str(path))
    assert code == 0 and "fashion-mnist  found" in out and f"written to {path}" in out
    assert json.loads(path.read_text()) == rows


USER = "SRJu2W7V"


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["token", "a.png", "--encoder", "E", "--out", "o", "--user", USER], "user", USER),
        (["token", "a.png", "--encoder", "E", "--out", "o", "--user-id", USER], "user", USER),
        (["query", "a.png", "--encoder", "E", "--user", USER], "user", USER),
        (["users", "add", "--user", USER], "user", USER),
        (["users", "add", "--id", USER], "user", USER),
        (["evaluate", "--model", "m", "--limit-test", "50"], "limit_test", 50),
        (["evaluate", "--model", "m", "--limit", "50"], "limit_test", 50),
        (["eval-tokens", "--encoder", "E", "--limit-test", "50"], "limit_test", 50),
        (["eval-tokens", "--encoder", "E", "--limit", "50"], "limit_test", 50),
        (["attack", "gaussian", "--limit-test", "50"], "limit_test", 50),
        (["datasets", "--json", "-"], "json", "-"),
        (["eval-tokens", "--encoder", "E", "--json", "r.json"], "json", "r.json"),
        (["attack", "gaussian", "--json", "r.json"], "json", "r.json"),
        (["query", "a.png", "--encoder", "E", "--json", "-"], "json", "-"),
        (["users", "list", "--json", "r.json"], "json", "r.json"),
        (["users", "show", USER, "--json", "-"], "json", "-"),
    ],
)
def test_renamed_flags_and_their_old_spellings_parse(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize(
    "argv, old",
    [(["token"], "--user-id"), (["users", "add"], "--id "), (["evaluate"], "--limit ")],
)
def test_help_shows_only_the_new_spelling(capsys, argv, old):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    assert old not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["protect", "--out", "{out}", "--epochs", "0"],
        ["protect", "--out", "{out}", "--gamma", "1"],
        ["evaluate", "--model", "m", "--limit-test", "-5"],
        ["datasets", "--json"],  # --json takes a PATH ('-' for stdout)
    ],
)
def test_bad_numbers_fail_at_parse_time(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(out=tmp_path / "run") for a in argv])
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attack", "nope", "--model", "{tmp}/model", "--out", "{out}"], "unknown attack 'nope'"),
        (["attack", "pruning", "--attack-param", "pruning.nope=1", "--model", "{tmp}/model"],
         "no parameter 'nope'"),
        (["attack", "gaussian", "--attack-param", "nope.steps=1", "--model", "{tmp}/model"],
         "unknown attack 'nope'"),
        (["protect", "--preset", "nope", "--out", "{out}"], "no preset or config file 'nope'"),
        (["sweep", "gamma", "--preset", "nope", "--out", "{out}"], "no preset or config file"),
        (["compare", "--schemes", "activedaemon,nope", "--out", "{out}"], "unknown scheme 'nope'"),
        (["compare", "--attacks", "pruning,nope", "--out", "{out}"], "unknown attack 'nope'"),
        (["protect", "--strategy", "nope", "--out", "{out}"], "unknown strategy 'nope'"),
        (["sweep", "strategy", "--values", "single,nope", "--out", "{out}"], "unknown strategy"),
        (["sweep", "encoder", "--values", "fashion-mnist-32,nope", "--out", "{out}"],
         "no encoder at 'nope'"),
        (["train-clean", "--arch", "nope", "--out", "{out}"], "unknown classifier 'nope'"),
        (["protect", "--dataset", "nope", "--out", "{out}"], "unknown data set 'nope'"),
        (["protect", "--set", "dataset=nope", "--out", "{out}"], "unknown data set 'nope'"),
        (["protect", "--set", "poison.nope=1", "--out", "{out}"], "nope"),
        (["token", "a.png", "--encoder", "E", "--user", "short", "--out", "{out}"], "--user"),
    ],
)  # fmt: skip
def test_unknown_names_fail_before_any_work(capsys, tmp_path, argv, message):
    """Exit 2 with the valid names before any work: nothing trains, loads or writes. (No timed
    assert: a loaded CI machine once took 1.02 s for this.)"""
    argv = [a.format(out=tmp_path / "run", tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("activedaemon: error:") and message in err
    assert list(tmp_path.iterdir()) == []  # no run folder
    if "unknown" in message:
        assert "choose from:" in err


def test_help_imports_nothing_heavy():
    """The command modules import the library only when a command runs, and the package's
    top level is lazy, so that `activedaemon --help` stays fast."""
    code = """if True:
        import sys
        from activedaemon.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = ("torch", "torchvision", "numpy", "yaml", "matplotlib", "fastapi", "httpx")
        print([m for m in heavy if m in sys.modules])
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
