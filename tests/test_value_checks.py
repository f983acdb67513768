"""Every value is checked before anything exists on disk: one line naming the key and the fix, a non-zero exit,
and no OUT folder afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicorn_datasets.cli import main
from unicorn_datasets.generation.base import SamplingParams
from unicorn_datasets.testing.fake_openai_server import serve


def _build(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str], Path]:
    out = tmp_path / "out"
    rc = main(["build", "--recipe", "demo", "--out", str(out), "--limit", "2", *args])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("unicorn: error:")]
    return rc, errors, out


@pytest.mark.parametrize("setting, names", [
    ("captions.sampling.temperature=-1", "'captions.sampling.temperature' must be >= 0"),
    ("instruct.sampling.top_p=0", "'instruct.sampling.top_p' must be > 0"),
    ("captions.sampling.top_p=1.5", "'captions.sampling.top_p' must be <= 1"),
    ("captions.sampling.max_new_tokens=0", "'captions.sampling.max_new_tokens' must be >= 1"),
    ("instruct.sampling.repetition_penalty=0", "'instruct.sampling.repetition_penalty' must be > 0"),
    ("instruct.mix={mc: 0, qa: 0, reasoning: 0}", "'instruct.mix' needs a task with a share > 0"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, setting: str, names: str
) -> None:
    rc, errors, out = _build(tmp_path, capsys, "--set", setting)
    assert rc != 0 and len(errors) == 1 and names in errors[0] and f"--set {setting}" in errors[0], errors
    assert not out.exists()


def test_a_mix_of_zeros_is_fine_when_the_instruct_stage_does_not_run() -> None:
    from unicorn_datasets.recipe import load_recipe

    recipe = load_recipe("demo", {"stages": "captions", "instruct.mix": {"mc": 0, "qa": 0, "reasoning": 0}})
    assert recipe.stages == ("captions",)


@pytest.mark.parametrize("endpoint, why", [
    ("htp:/x", "'htp:' is not a host[:port]"),
    ("ftp://host", "the scheme must be http or https"),
    ("http://", "it names no host"),
    ("http://my host:8000", "is not a host[:port]"),
])
def test_an_endpoint_that_is_not_a_url_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, endpoint: str, why: str
) -> None:
    rc, errors, out = _build(tmp_path, capsys, "--llm-endpoint", f"http://localhost:8000,{endpoint}")
    assert rc != 0 and len(errors) == 1, errors
    assert "llm.endpoints[1]" in errors[0] and why in errors[0] and "--llm-endpoint" in errors[0], errors
    assert not out.exists()


def test_sampling_params_refuse_values_no_server_accepts() -> None:
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-0.1)
    SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0)  # the edges are fine


def test_an_endpoint_refusing_connections_leaves_nothing_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with serve(median=0.01, p99=0.02, down="refuse") as server:
        rc, errors, out = _build(tmp_path, capsys, "--stages", "captions", "--llm", "fake-model",
                                 "--llm-endpoint", server.url)
    assert rc != 0 and len(errors) == 1 and server.url in errors[0], errors
    assert not out.exists()
