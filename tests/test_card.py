"""The dataset card a Hub user reads: license, model named by Hub id (never a local path), sizes as the
Hub computes them, seed statistics, requested vs delivered task mix, every rejection reason with its rate,
and plots linked so the Hub renders them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from unicorn_datasets.dataset.card import llm_name, write_card
from unicorn_datasets.recipe import load_recipe


def _folder(tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    for config, n in (("captions", 6), ("instruct", 4)):
        (out / config).mkdir(parents=True)
        caps = [f"a caption number {i} " * 5 for i in range(n)]
        table = pa.table({"id": [f"r{i}" for i in range(n)], "caption": caps})
        pq.write_table(table.slice(0, n // 2), out / config / "train-00000-of-00002.parquet")
        pq.write_table(table.slice(n // 2), out / config / "train-00001-of-00002.parquet")
    (out / "artifacts").mkdir()
    (out / "artifacts" / "cluster_sizes.png").write_bytes(b"\x89PNG")
    return out


def _manifest(recipe: dict, llm: dict) -> dict:
    return {
        "recipe": recipe,
        "fingerprint": "abc",
        "code_version": "0.1.0",
        "seeds": {"selected": 8, "builtin:open_domain": {"read": 10, "duplicates": 1, "too_short": 1, "kept": 8}},
        "llm": llm,
        "provenance": {"transfer": {"encoder": {"path": "/home/me/models/clip", "model_id": "org/clip"}}},
        "stages": {
            "captions": {"rows_in": 8, "rows_out": 6, "rejected": {"off_seed": 1, "truncated": 1},
                         "attempt_reasons": {"off_seed": 3, "truncated": 1, "too_short": 2}},
            "instruct": {"rows_in": 6, "rows_out": 4, "rejected": {"bad_json": 2}, "tasks": {"mc": 3, "qa": 1},
                         "attempt_reasons": {"bad_json": 4}},
        },
    }


def _card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


def test_card_header_license_and_sizes_as_the_hub_computes_them(tmp_path: Path) -> None:
    out = _folder(tmp_path)
    recipe = load_recipe("demo").to_dict()
    gemma = {"backend": "transformers", "model": "gemma3-270m-gguf", "hub_id": "google/gemma-3-270m",
             "file": "gemma-3-270m-q4_k_m.gguf", "file_sha256": "a5fd"}
    write_card(out, _manifest(recipe, gemma))
    head, body = _card(out)
    assert head["license"] == "gemma"
    infos = {i["config_name"]: i for i in head["dataset_info"]}
    for config in ("captions", "instruct"):
        files = sorted((out / config).glob("*.parquet"))
        split = infos[config]["splits"][0]
        assert split["num_bytes"] == pq.read_table(files).nbytes == infos[config]["dataset_size"]
        assert infos[config]["download_size"] == sum(f.stat().st_size for f in files)
    assert "google/gemma-3-270m" in body and "a5fd" in body
    assert "/home/me" not in body  # provenance paths are left out
    # seed statistics
    assert "| `builtin:open_domain` | 10 | 8 | duplicates: 1, too_short: 1 |" in body and "8 seeds selected" in body
    # requested vs delivered task mix side by side
    assert "| mc | 1 | 3 | 75.0% |" in body and "| reasoning | 1 | 0 | 0.0% |" in body
    # every reason with count, rate and failed attempts (retries of accepted rows included)
    assert "| captions | `off_seed` | 1 | 12.5% | 3 |" in body
    assert "| captions | `too_short` | 0 | 0.0% | 2 |" in body
    assert "| instruct | `bad_json` | 2 | 33.3% | 4 |" in body
    # plots: relative links the Hub resolves, only for images that exist
    assert "![k-means cluster sizes of the captions](artifacts/cluster_sizes.png)" in body
    assert "caption_lengths.png" not in body


def test_other_license_and_local_models_are_never_named_by_path(tmp_path: Path) -> None:
    out = _folder(tmp_path)
    recipe = load_recipe("unicorn-471k").to_dict()
    local = {"backend": "transformers", "model": str(tmp_path), "revision": "c0ffee"}
    write_card(out, _manifest(recipe, local))
    head, body = _card(out)
    assert head["license"] == "other" and head["license_name"] == "qwen" and head["license_link"].startswith("https")
    assert str(tmp_path) not in body and "c0ffee" in body
    assert llm_name({"model": "Qwen/Qwen2.5-72B-Instruct", "hub_id": "Qwen/Qwen2.5-72B-Instruct"}).startswith(
        "[`Qwen/Qwen2.5-72B-Instruct`](https://huggingface.co/Qwen/Qwen2.5-72B-Instruct)")
    assert "local model" in llm_name({"model": "/srv/weights/llm.gguf"})
    assert "google/gemma-3-270m" in llm_name({"backend": "server", "model": "gemma3-270m-gguf"})  # the demo alias
    recipe.pop("license")
    write_card(out, _manifest(recipe, local))
    assert _card(out)[0]["license"] == "unknown"
