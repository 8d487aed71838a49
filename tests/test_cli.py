import subprocess
import sys

from arclens.cli import COMMANDS, main


def test_usage_error_is_one_line_exit_2(capsys):
    assert main(["extract", "--model", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required" in err[0]


def test_every_command_has_help():
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "arclens.cli", name, "--help"], capture_output=True, text=True, check=False)
        assert out.returncode == 0, (name, out.stderr)
        assert "usage" in out.stdout
