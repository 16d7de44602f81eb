"""The body every recipe's ``main`` shares (``bridge_ray.recipe.recipe_main``)."""
import json

import pytest

from bridge_ray.errors import ConfigError
from bridge_ray.recipe import recipe_main


def test_dry_run_prints_the_config_and_runs_nothing(capsys):
    calls = []
    out = recipe_main(["a=1", "--dry-run"], lambda args: {"args": args}, lambda cfg: cfg,
                      act=lambda cfg: calls.append("act"), before=lambda cfg: calls.append("before"))
    assert out is None and calls == []
    assert json.loads(capsys.readouterr().out) == {"args": ["a=1"]}


def test_a_run_calls_before_then_act_and_prints_the_report(capsys):
    calls = []
    out = recipe_main(["x"], lambda args: args, lambda cfg: cfg, act=lambda cfg: calls.append("act") or 7,
                      report=lambda r: f"result {r}", before=lambda cfg: calls.append("before"))
    assert out == 7 and calls == ["before", "act"]
    assert capsys.readouterr().out == "result 7\n"


def test_an_error_is_one_line_and_its_exit_code(capsys):
    def build(args):
        raise ConfigError("sft.lr must be a number: set sft.lr=1e-5")

    with pytest.raises(SystemExit) as exit_:
        recipe_main([], build, lambda cfg: cfg, act=lambda cfg: None)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: sft.lr must be a number: set sft.lr=1e-5\n"
