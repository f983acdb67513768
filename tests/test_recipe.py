"""The typed recipe: every shipped recipe loads; bad keys, types and values fail naming the key, origin and fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from unicorn_datasets import prompts
from unicorn_datasets.dataset.repo import BuildRepo
from unicorn_datasets.generation.base import SamplingParams, resolve_prompt_mode
from unicorn_datasets.recipe import (
    LLMSection,
    Recipe,
    RecipeError,
    available,
    check_key,
    load_recipe,
    parse_set,
    read_recipe,
)
from unicorn_datasets.stages.captions import CaptionStage, template


def test_every_shipped_recipe_loads_with_its_file_values() -> None:
    assert set(available()) >= {"demo", "unicorn-1.2m", "unicorn-471k"}
    for name in available():
        r = load_recipe(name)
        raw = yaml.safe_load((ROOT / "builders" / f"{name}.yaml").read_text())
        assert r.name == raw["name"] and r.limit == raw["limit"] and list(r.stages) == raw["stages"]
        assert r.llm.model == raw["llm"]["model"] and r.captions.min_words == raw["captions"]["min_words"]
        assert r.captions.sampling.max_new_tokens == raw["captions"]["sampling"]["max_new_tokens"]
        assert [s.path for s in r.seeds] == [s["path"] for s in raw["seeds"]]
        assert Recipe.from_dict(r.to_dict()) == r  # to_dict round-trips (the manifest and state hold it)
        json.dumps(r.to_dict())


def test_defaults_are_filled_once() -> None:
    r = Recipe.from_dict({"seeds": [{"path": "builtin:open_domain"}]})
    assert r.seed == 0 and r.limit is None and r.shard_size == 64 and r.stages == ("captions",)
    assert r.llm.prompt_mode == "auto" and r.llm.model == "gemma3-270m-gguf" and r.llm.endpoints == ()
    assert r.seeds[0].kind == "captions" and r.seeds[0].min_words == 2
    assert r.captions.sampling == SamplingParams(max_new_tokens=768)
    assert r.instruct.sampling.max_new_tokens == 1024 and r.instruct.mix["mc"] == pytest.approx(1 / 3)
    assert r.transfer.method == "mean-shift" and r.transfer.shard_size is None


def test_a_partial_nested_section_keeps_that_sections_own_defaults() -> None:
    r = Recipe.from_dict({"captions": {"sampling": {"temperature": 0.2}}})
    assert r.captions.sampling == SamplingParams(max_new_tokens=768, temperature=0.2)
    r = Recipe.from_dict({"instruct": {"sampling": {"top_p": 0.5}}})
    assert r.instruct.sampling == SamplingParams(max_new_tokens=1024, temperature=0.7, top_p=0.5)


def test_fingerprint_is_the_same_when_a_default_is_spelt_out() -> None:
    base = load_recipe("demo")
    explicit = load_recipe("demo", {"llm.max_retries": 5, "transfer.shard_size": None, "captions.sampling.top_p": 0.9,
                                    "instruct.constrained": True, "seed": 0})
    assert explicit.fingerprint() == base.fingerprint()
    assert load_recipe("demo", {"description": "other words"}).fingerprint() == base.fingerprint()
    assert load_recipe("demo", {"captions.min_words": 36}).fingerprint() != base.fingerprint()
    assert load_recipe("demo", {"seed": 1}).fingerprint() != base.fingerprint()
    assert load_recipe("demo", {"limit": None}).limit is None  # `--set limit=null`: every seed


def test_types_are_kept_and_checked() -> None:
    r = load_recipe("demo", {"instruct.mix": {"mc": 3, "qa": 0.5}, "llm.endpoints": "http://a:1, http://b:2",
                             "stages": "captions,pretrain", "transfer.noise_sigma": 1})
    assert r.instruct.mix == {"mc": 3, "qa": 0.5} and isinstance(r.instruct.mix["mc"], int)  # ints are counts
    assert r.llm.endpoints == ("http://a:1", "http://b:2") and r.stages == ("captions", "pretrain")
    assert r.transfer.noise_sigma == 1.0 and isinstance(r.transfer.noise_sigma, float)
    with pytest.raises(RecipeError, match=r"'llm.batch_size' must be int, got bool True"):
        load_recipe("demo", {"llm.batch_size": True})
    with pytest.raises(RecipeError, match=r"'transfer.renormalize' must be bool, got str 'yes'"):
        load_recipe("demo", {"transfer.renormalize": "yes"})
    with pytest.raises(RecipeError, match=r"'instruct.items.mc' must be a list of 2 values"):
        load_recipe("demo", {"instruct.items": {"mc": [1]}})
    with pytest.raises(RecipeError, match=r"unknown key 'instruct.mix.mcq' in 'instruct.mix' \(did you mean 'inst"):
        load_recipe("demo", {"instruct.mix.mcq": 2})
    with pytest.raises(RecipeError, match=r"^--set x: 'instruct.items.qa' must be \[min, max\] with 1 <= min <= max"):
        load_recipe("demo", {"instruct.items.qa": [3, 2]}, {"instruct.items.qa": "--set x"})


def test_unknown_key_in_a_file_names_the_file_the_key_and_the_nearest_one(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("seeds: [{path: builtin:open_domain}]\ncaptions:\n  min_word: 30\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "'captions.min_word'" in msg and "did you mean 'captions.min_words'" in msg


def test_misspelt_section_and_value_name_the_nearest_valid_one(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("seeds: [{path: builtin:open_domain, colum: text}]\n")
    with pytest.raises(RecipeError, match=r"'seeds\[0\].colum'.*did you mean 'seeds\[0\].column'"):
        load_recipe(str(path))
    path.write_text("captionz: {min_words: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'captionz' at the top level \(did you mean 'captions'\?\)"):
        load_recipe(str(path))
    path.write_text("stages: [captions, pretrian]\n")
    with pytest.raises(RecipeError, match=r"'stages\[1\]' must be one of captions, instruct, pretrain.*'pretrain'"):
        load_recipe(str(path))
    path.write_text("transfer: {method: meanshift}\n")
    with pytest.raises(RecipeError, match=r"did you mean 'mean-shift'"):
        load_recipe(str(path))
    path.write_text("seeds: [{kind: domains}]\n")
    with pytest.raises(RecipeError, match=r"'seeds\[0\].path' is required"):
        load_recipe(str(path))


def test_set_of_an_unknown_key_names_the_set_and_the_nearest_key() -> None:
    with pytest.raises(RecipeError) as e:
        check_key("instruct.max_char", "--set instruct.max_char=3")
    assert str(e.value) == ("--set instruct.max_char=3: unknown key 'instruct.max_char' in 'instruct' "
                            "(did you mean 'instruct.max_chars'?)")
    with pytest.raises(RecipeError, match="'seed' has no sub-keys"):
        check_key("seed.x", "--set seed.x=1")
    check_key("instruct.mix.mc", "--set")  # inside a free mapping any key goes
    assert parse_set("captions.sampling={temperature: 0.1}") == ("captions.sampling", {"temperature": 0.1})
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_set("captions.min_words")


def test_an_out_of_range_value_names_its_flag() -> None:
    with pytest.raises(RecipeError, match=r"^--limit 0: 'limit' must be >= 1, got 0$"):
        load_recipe("demo", {"limit": 0}, {"limit": "--limit 0"})
    with pytest.raises(RecipeError, match=r"^builders/demo.yaml: 'shard_size' must be >= 1, got 0$"):
        Recipe.from_dict({**read_recipe("demo")[0], "shard_size": 0}, source="builders/demo.yaml")
    with pytest.raises(RecipeError, match=r"unknown recipe 'nope' \(available: demo"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match=r"recipe file nope.yaml not found"):
        load_recipe("nope.yaml")


def test_a_bare_name_is_a_packaged_recipe_even_beside_a_folder_of_that_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "demo").mkdir()  # e.g. the output of an earlier `--out demo`
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == "demo"
    (tmp_path / "mine.yml").write_text("name: mine\nlimit: 3\n")
    assert load_recipe("mine.yml").limit == 3


def test_prompt_mode_has_one_meaning() -> None:
    assert LLMSection().prompt_mode == "auto"
    assert resolve_prompt_mode("auto", True) == "chat" and resolve_prompt_mode("auto", False) == "completion"
    assert resolve_prompt_mode("completion", True) == "completion"
    with pytest.raises(ValueError, match="no chat template"):
        resolve_prompt_mode("chat", False)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--limit", "0"], "unicorn: error: --limit 0: 'limit' must be >= 1, got 0"),
        (["--shard-size", "-2"], "unicorn: error: --shard-size -2: 'shard_size' must be >= 1, got -2"),
        (["--set", "captions.min_word=3"], "unicorn: error: --set captions.min_word=3: unknown key "
                                           "'captions.min_word' in 'captions' (did you mean 'captions.min_words'?)"),
        (["--set", "llm.batch_size=many"], "unicorn: error: --set llm.batch_size=many: 'llm.batch_size' must be int, "
                                           "got str 'many'"),
        (["--recipe", "demoo"], "unicorn: error: unknown recipe 'demoo' (available: demo"),
    ],
)
def test_cli_refuses_a_bad_recipe_in_one_line_with_exit_3(tmp_path: Path, args: list[str], expect: str) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "unicorn_datasets.cli", "build", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith(expect), r.stderr
    assert not out.exists()


def test_a_skipped_caption_stage_reports_the_prompt_mode_auto_resolved_to(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path / "out")
    repo.mark_stage_complete("captions", {"rows_in": 0, "rows_out": 0, "rejected": {}, "prompt_mode": "chat"})
    stage = CaptionStage(Recipe().captions, [], prompt_mode="auto", build_seed=0, model_id="m")
    stage.resumed(repo)
    prov = stage.provenance()
    assert prov["prompt_mode"] == "chat" and prov["prompt_sha"] == prompts.template_hash(template("chat"))
