"""``python -m salmonn_cli``: the ``salmonn`` command."""

from .main import cli

if __name__ == "__main__":
    cli(prog_name="salmonn")
