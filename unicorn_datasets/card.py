"""The dataset card: YAML `configs` + `dataset_info` that `datasets` and the Hub viewer read, plus prose."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any

import datasets
import pyarrow.parquet as pq
import yaml

from .repo import atomic_write_text

TEMPLATE = Path(__file__).resolve().parent.parent / "cards" / "dataset_card.md"
CONFIG_ORDER = ("pretrain", "instruct", "captions")
ABOUT = {
    "captions": "Stage 1: one dense, objective caption per seed (`id`, `seed`, `source`, `caption`).",
    "pretrain": "Stage 3: caption + synthetic image `embedding` + LLaVA `conversations` for projector pretraining.",
    "instruct": "Stage 2: multi-turn instruction data (`task` = mc / qa / reasoning), `embedding` joined by `id`.",
}


def _config_info(out: Path, config: str) -> dict[str, Any] | None:
    files = sorted((out / config).glob("*.parquet"))
    if not files:
        return None
    meta = [pq.ParquetFile(f).metadata for f in files]
    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    return {
        "config_name": config,
        "features": features._to_yaml_list(),
        "splits": [
            {
                "name": "train",
                "num_bytes": int(
                    sum(
                        m.serialized_size + sum(m.row_group(i).total_byte_size for i in range(m.num_row_groups))
                        for m in meta
                    )
                ),
                "num_examples": int(sum(m.num_rows for m in meta)),
            }
        ],
    }


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    infos = [i for c in CONFIG_ORDER if (i := _config_info(out, c))]
    configs = []
    for n, info in enumerate(infos):
        entry: dict[str, Any] = {
            "config_name": info["config_name"],
            "data_files": [{"split": "train", "path": f"{info['config_name']}/train-*.parquet"}],
        }
        if n == 0:
            entry["default"] = True
        configs.append(entry)
    recipe = manifest["recipe"]
    header = {
        "pretty_name": f"{recipe.get('name')} (unicorn-datasets)",
        "language": ["en"],
        "tags": ["synthetic", "text-only-vlm", "unicorn", "image-embeddings"],
        "task_categories": ["image-text-to-text"],
        "size_categories": [_size_category(max((i["splits"][0]["num_examples"] for i in infos), default=0))],
        "configs": configs,
        "dataset_info": infos,
    }
    stages = manifest.get("stages", {})
    rej_rows = [
        (
            stage,
            s.get("rows_in", 0),
            s.get("rows_out", 0),
            ", ".join(f"{k}: {v}" for k, v in sorted(s.get("rejected", {}).items())) or "none",
        )
        for stage, s in stages.items()
        if stage in ("captions", "instruct")
    ]
    prov = manifest.get("provenance", {})
    llm = manifest.get("llm", {})
    prov_rows = [
        ("LLM", f"`{llm.get('model')}` ({llm.get('backend', 'server')})"),
        ("LLM weights", f"`{llm.get('file_sha256') or llm.get('revision') or 'n/a'}`"),
        ("build seed", str(recipe.get("seed", 0))),
    ]
    for stage, p in prov.items():
        prov_rows.append((stage, "`" + json.dumps(p, sort_keys=True, default=str) + "`"))
    body = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        yaml=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(),
        title=f"{recipe.get('name')}: synthetic vision-language training data",
        description=recipe.get("description", ""),
        code_version=manifest.get("code_version", ""),
        recipe_name=recipe.get("name"),
        fingerprint=manifest.get("fingerprint"),
        load_path=out.name,
        configs_table=_table(
            [(i["config_name"], i["splits"][0]["num_examples"], ABOUT[i["config_name"]]) for i in infos],
            ("config", "rows", "what it holds"),
        ),
        stages_text=_stages_text(recipe, stages) + _diversity_text(manifest.get("diversity", {})),
        provenance_table=_table(prov_rows, ("what", "value")),
        rejections_table=_table(rej_rows, ("stage", "rows in", "rows out", "rejections by reason")),
    )
    atomic_write_text(out / "README.md", body)


def _stages_text(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    parts = []
    if "captions" in stages:
        c = recipe.get("captions", {})
        llm = recipe.get("llm", {})
        parts.append(
            f"1. **Captions**: each seed expanded by `{llm.get('model')}` into one objective paragraph "
            f"({c.get('min_words')}-{c.get('max_words')} words), {llm.get('prompt_mode')} prompts."
        )
    if "instruct" in stages:
        parts.append(
            f"2. **Instructions**: task mix {stages['instruct'].get('tasks')}, JSON-schema constrained output, "
            "validated (option letters, item counts, verbatim copying) and retried."
        )
    if "pretrain" in stages:
        t = stages["pretrain"].get("transfer", {})
        enc = t.get("encoder", {})
        parts.append(
            f"3. **Transfer**: captions encoded with `{enc.get('encoder', enc.get('path'))}` "
            f"({stages['pretrain'].get('dim')}-d, "
            f"L2-normalised), method `{t.get('method')}` (renormalise: {t.get('renormalize')}, noise sigma: "
            f"{t.get('noise_sigma')}); the text mean over {t.get('count')} captions is in `artifacts/text_mean.npy`; "
            f"{stages['pretrain'].get('truncated_by_encoder', 0)} caption(s) were cut by the encoder's token limit. "
            "At inference on real images, subtract the mean of the image set (`unicorn embed-images`)."
            + _prior_text(t.get("prior"))
        )
    return "\n".join(parts)


def _prior_text(prior: dict[str, Any] | None) -> str:
    """The learned prior a build used, and its own held-out evaluation beside the zero-parameter transfers."""
    if not prior:
        return ""
    data = prior.get("training_data") or {}
    ev = prior.get("evaluation") or {}
    text = (f"\n\n   The image embeddings come from a learned **{prior.get('family')} prior** (`{prior.get('path')}`, "
            f"weights `{prior.get('weights_sha256')}`) trained on {data.get('n_pairs')} caption/image pairs "
            f"(`{data.get('source')}`, data `{data.get('fingerprint')}`).")
    methods = ev.get("methods") or {}
    if methods:
        rows = [(m, f"{r['paired_cosine']:.3f}", f"{r['recall@1']:.3f}", f"{r['recall@5']:.3f}", f"{r['frechet']:.4f}")
                for m, r in methods.items()]
        text += (f" On {ev.get('n')} held-out pairs ({ev.get('split', 'held out')}), against the real image "
                 "embeddings minus their mean:\n\n"
                 + _table(rows, ("method", "paired cosine", "recall@1", "recall@5", "Fréchet distance")))
    return text


def _diversity_text(div: dict[str, Any]) -> str:
    if not div.get("k") or div.get("top5_share") is None:
        return ""
    return (f"\n\n**Diversity and balance** (Synth²-style, `artifacts/report.json`): {div.get('n_captions')} captions "
            f"in k={div.get('k')} k-means clusters; the 5 largest hold {div.get('top5_share', 0):.1%}; cluster-size "
            f"entropy {div.get('entropy', 0):.2f} (normalised {div.get('entropy_normalised', 0):.2f}); mean "
            f"per-caption type-token ratio {div.get('ttr', 0):.2f}.")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"
