"""The README stays true: its settings table is the generated one, and its commands parse."""

import re
import shlex
from pathlib import Path

import pytest

from ganwatch.cli import build_parser
from ganwatch.settings import settings_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_commands() -> list[str]:
    """Every command line in the README's ```sh blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]
    return lines


def test_settings_reference_is_the_generated_one():
    block = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", README, flags=re.S)
    assert block, "README lacks the settings markers"
    assert block.group(1) == settings_reference_markdown(), (
        "README settings table is stale: regenerate with `python -m ganwatch.settings`"
    )


GANWATCH = [c for c in shell_commands() if c.startswith("ganwatch ")]


def test_readme_shows_the_main_commands():
    assert {"make demo", "make test"} <= {c.split("  ")[0].strip() for c in shell_commands()}
    assert {c.split()[1] for c in GANWATCH} >= {"train", "score", "evaluate", "serve", "replay"}


@pytest.mark.parametrize("command", GANWATCH, ids=[c.split()[1] for c in GANWATCH])
def test_every_ganwatch_command_in_the_readme_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_every_make_target_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = set(re.findall(r"(?:^|`)make ([a-z]+)", README, flags=re.M))
    assert used and used <= targets, f"README names make targets {used - targets} the Makefile lacks"
