"""`unicorn plan`: predicted counts against the build they predict, the plan in the manifest and card, and
the errors that must come before any probe request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, run_build

from unicorn_datasets.cli import EXIT_BUILD, EXIT_INPUT, main

# Stage 1 only, short answers: the tiny model's few-shot prompts are long, its answers word salad.
ARGS = ["--recipe", "demo", "--limit", "12", "--stages", "captions", *TINY_FLAGS,
        "--set", "captions.sampling.max_new_tokens=30"]


def within(predicted: float, actual: float, tolerance: float) -> bool:
    return abs(predicted - actual) <= tolerance * actual


def test_plan_predicts_the_tiny_build_and_the_build_records_it(tiny_llm: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    args = [*ARGS, "--llm", str(tiny_llm)]
    plan_file = tmp_path / "plan.json"
    assert main(["plan", *args, "--probe", "6", "--json", "--save", str(plan_file),
                 "--price-per-mtok", "0.5,1.5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan) == {"stages", "total", "probe"}
    predicted = plan["stages"]["captions"]
    assert {"rows", "requests", "prompt_tokens", "completion_tokens", "seconds"} <= set(predicted)
    assert plan["probe"]["stages"]["captions"]["rows"] == 6  # the probe sent 6 rows, not the build's 12
    assert predicted["prompt_tokens"] > 0 and plan["total"]["cost_usd"] > 0
    assert json.loads(plan_file.read_text()) == plan
    assert not list(tmp_path.glob("*/.build"))  # no dataset written

    out = tmp_path / "out"
    r = run_build([*args, "--out", str(out), "--plan", str(plan_file)])
    assert r.returncode == 0, r.stderr[-3000:]
    recorded = json.loads((out / "artifacts" / "build_manifest.json").read_text())["plan"]["stages"]["captions"]
    actual = recorded["actual"]
    assert recorded["predicted"]["requests"] == predicted["requests"]
    assert predicted["rows"] == actual["rows"] == 12
    assert within(predicted["requests"], actual["requests"], 0.15), (predicted, actual)
    assert within(predicted["completion_tokens"], actual["completion_tokens"], 0.15), (predicted, actual)
    assert "### Plan vs build" in (out / "README.md").read_text()

    # a plan made for other settings is refused before anything is written
    other = tmp_path / "other"
    r = run_build([*args, "--out", str(other), "--plan", str(plan_file), "--set", "captions.max_attempts=1"])
    assert r.returncode == EXIT_BUILD and "was made for other settings" in r.stderr
    assert not other.exists()


def test_unreachable_server_is_one_line_before_any_request(capsys: pytest.CaptureFixture) -> None:
    code = main(["plan", "--recipe", "demo", "--limit", "4", "--stages", "captions",
                 "--llm-endpoint", "http://127.0.0.1:9", "--set", "llm.timeout=2", "--set", "llm.max_retries=0"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unicorn: error:")]
    assert code == EXIT_BUILD and len(err) == 1 and "127.0.0.1:9" in err[0]


def test_bad_seeds_and_bad_prices_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--seeds", str(tmp_path / "missing.txt"), "--llm-endpoint", "http://127.0.0.1:9"]) \
        == EXIT_INPUT
    assert main(["plan", "--llm-endpoint", "http://127.0.0.1:9", "--price-per-mtok", "cheap"]) == EXIT_BUILD
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unicorn: error:")]
    assert len(err) == 2 and "missing.txt" in err[0] and "--price-per-mtok cheap" in err[1]


def test_plan_of_all_three_stages_follows_stage_one_into_the_task_mix(tiny_llm: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    args = ["--recipe", "demo", "--limit", "9", "--stages", "captions,instruct,pretrain", *TINY_FLAGS,
            "--set", "instruct.sampling.max_new_tokens=120",
            "--llm", str(tiny_llm), "--probe", "6", "--json", "--gpu-hour-price", "2", "--gpus", "4"]
    assert main(["plan", *args]) == 0
    plan = json.loads(capsys.readouterr().out)
    stages, probe = plan["stages"], plan["probe"]["stages"]
    assert list(stages) == ["captions", "instruct", "pretrain"]
    accepted = stages["captions"]["accepted"]
    assert accepted == round(9 * probe["captions"]["accept_share"]) > 0
    assert probe["instruct"]["rows"] > 0 and stages["instruct"]["requests"] > 0  # probed with Stage 1's captions
    # Stage 2 takes the build's task mix of the predicted captions; Stage 3 encodes every one of them
    assert stages["instruct"]["rows"] == sum(stages["instruct"]["tasks"].values()) <= accepted
    assert stages["pretrain"]["rows"] == accepted and stages["pretrain"]["requests"] == 0
    total = plan["total"]
    assert total["seconds"] == pytest.approx(sum(s["seconds"] or 0 for s in stages.values()), abs=0.2)
    assert total["cost_usd"] == pytest.approx(total["seconds"] / 3600 * 4 * 2, abs=0.01)
