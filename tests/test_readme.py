"""The README stays true: its settings table is the generated one, and its commands parse."""

import math
import re
import shlex
from pathlib import Path

import pytest

from ganwatch.cli import build_parser
from ganwatch.settings import settings_reference_markdown
from training.config import TrainConfig

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


# Every training default the README quotes, read back from its text: (pattern, TrainConfig field,
# how the README writes the value). Each pattern must occur, and every occurrence must agree.
TRAINING_DEFAULTS = [
    (r"\*\*Defaults\*\* are defined once.*?window (\d+),", "window", None),
    (r"window \d+, (\d+) epochs", "epochs", None),
    (r"epochs, batch (\d+)", "batch_size", None),
    (r"batch \d+, hidden (\d+)", "hidden", None),
    (r"hidden \d+, latent (\d+)", "latent", None),
    (r"learning rate ([\d.e-]+), seed", "lr", None),
    (r"learning rate [\d.e-]+, seed (\d+)", "seed", None),
    (r"gradient penalty \(weight ([\d.]+)\)", "gp_weight", None),
    (r"reconstruction loss \(weight ([\d.]+)\)", "rec_weight", None),
    (r"fitted on the first ([\d.]+) % of the training rows", "calib_fraction",
     lambda f: 100 * (1 - f)),
    (r"ending in the last\s+([\d.]+) % are held back", "calib_fraction", lambda f: 100 * f),
    (r"autocorrelation exceeds ([\d.]+) are \*slow\*", "slow_autocorr", None),
    (r"at least ([\d.]+) \(`level_r2`\)", "level_r2", None),
    (r"`bias_weight` ([\d.]+)\.", "bias_weight", None),
    (r"`critic_weight` ([\d.]+)", "critic_weight", None),
    (r"\(`flat_weight` ([\d.]+)\)", "flat_weight", None),
    (r"\(`peak_weight` ([\d.]+)\)", "peak_weight", None),
    (r"\(`noise_weight` ([\d.]+)\)", "noise_weight", None),
    (r"\(`season_weight` ([\d.]+);", "season_weight", None),
    (r"\(`noise_margin` = ln ([\d.]+)\)", "noise_margin", math.exp),
    (r"\(`peak_margin` = ln (\d+)\)", "peak_margin", math.exp),
    (r"`--false-alarm-target`, default ([\d.]+)", "false_alarm_target", None),
    (r"\(one normal window in ([\d,]+)\)", "false_alarm_target", lambda v: f"{round(1 / v):,}"),
    (r"\(`--contamination`, default ([\d.]+)\)", "contamination", None),
    (r"([\d,]+) windows over all epochs", "sample_budget", lambda v: f"{v:,}"),
    (r"each step takes (\d+)\s+windows instead of \d+ \(`long_batch_size`\)", "long_batch_size",
     None),
    (r"each step takes \d+\s+windows instead of (\d+)", "batch_size", None),
    (r"`--torch-threads` \(default (\d+)\)", "torch_threads", None),
    (r"on by default: `(channel_norm)`", "channel_norm", lambda on: "channel_norm" if on else None),
]


@pytest.mark.parametrize("pattern, field, shown", TRAINING_DEFAULTS,
                         ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(TRAINING_DEFAULTS)])
def test_training_defaults_in_the_readme_are_train_config(pattern, field, shown):
    found = re.findall(pattern, README, flags=re.S)
    assert found, f"README no longer quotes {field} as /{pattern}/"
    value = getattr(TrainConfig(), field)
    want = shown(value) if shown else value
    for text in found:
        got = text if isinstance(want, str) else float(text)
        assert got == pytest.approx(want), f"README says {field} is {text}, TrainConfig {value}"


def test_the_anomaly_free_false_alarm_figure_is_the_tables():
    """One measurement, one figure: the prose quotes the anomaly-free rate of the generated table
    (the README once quoted 16.5 % and 16.6 % for the same run)."""
    (row,) = re.findall(r"\| lstm-gan \| ([\d.]+) \|[^\n]*\n(?=\| lstm-ae)",
                        README.split("**skab/anomaly-free**\n\n", 1)[1].split("**tep**", 1)[0])
    (prose,) = re.findall(r"anomaly-free\s+FAR ([\d.]+) % against", README)
    assert prose == row

def test_the_seasonal_rules_in_the_readme_are_the_code():
    """The seasonal term's gates as the README states them are ``detector.season``'s."""
    from detector import season

    text = README.split("- **Seasonal term**", 1)[1].split("- **Contributions.**", 1)[0]
    assert f"span at least {season.MIN_CYCLES:g} of them" in " ".join(text.split())
    assert season.MIN_EXPLAINED == 0.5 and "at least half" in text
    day, week = dict(season.PERIODS)[season.DAY_MS], dict(season.PERIODS)[season.WEEK_MS]
    assert f"at most {day} bins, 5 minutes" in text and f"at most {week} bins, 30 minutes" in text
