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


@pytest.mark.parametrize("argv", [["datasets"], ["id"], ["id", "encode"], ["id", "decode"]])
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
