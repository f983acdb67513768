"""The dataset card: YAML `configs` + `dataset_info` that `datasets` and the Hub viewer read, plus prose.

What the card says about each stage (its config's line, its paragraph, its own sections such as the task mix)
comes from the stage registry (`StageSpec`)."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any

import datasets
import pyarrow.parquet as pq
import yaml

from unicorn_datasets.dataset.atomic import write_text
from unicorn_datasets.dataset.layout import CARD, REPORT, SEED_CLUSTERS, artifact
from unicorn_datasets.dataset.markdown import markdown_table as _table
from unicorn_datasets.packaged import shipped
from unicorn_datasets.stages import registered

TEMPLATE = "dataset_card.md"  # in cards/ (shipped inside the package)


def config_order() -> list[str]:
    """The configs, last stage first: the most derived config (the trainer's input) is the default one."""
    return [spec.config for spec in reversed(registered()) if spec.config]


def arrow_nbytes(files: list[Path]) -> int:
    """The split's Arrow in-memory size, as `datasets` records num_bytes (push_to_hub sums the shards'
    Arrow `nbytes`); read one row group at a time so memory stays one group."""
    total = 0
    for f in files:
        pf = pq.ParquetFile(f)
        total += sum(pf.read_row_group(i).nbytes for i in range(pf.num_row_groups))
    return total


def _config_info(out: Path, config: str) -> dict[str, Any] | None:
    files = sorted((out / config).glob("*.parquet"))
    if not files:
        return None
    meta = [pq.ParquetFile(f).metadata for f in files]
    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    num_bytes = arrow_nbytes(files)
    return {
        "config_name": config,
        "features": features._to_yaml_list(),
        "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": int(sum(m.num_rows for m in meta))}],
        "download_size": int(sum(f.stat().st_size for f in files)),  # the Parquet files a user downloads
        "dataset_size": num_bytes,
    }


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    infos = [i for c in config_order() if (i := _config_info(out, c))]
    about = {spec.config: spec.about for spec in registered() if spec.config}
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
        **_license(recipe),
        "language": ["en"],
        "tags": ["synthetic", "text-only-vlm", "unicorn", "image-embeddings"],
        "task_categories": ["image-text-to-text"],
        "size_categories": [_size_category(max((i["splits"][0]["num_examples"] for i in infos), default=0))],
        "configs": configs,
        "dataset_info": infos,
    }
    stages = manifest.get("stages", {})
    prov = manifest.get("provenance", {})
    llm = manifest.get("llm", {})
    prov_rows = [
        ("LLM", f"{llm_name(llm)} ({llm.get('backend', 'server')})"),
        ("LLM weights", f"`{llm.get('file_sha256') or llm.get('revision') or 'n/a'}`"),
        ("license", f"`{header['license']}`" + (f" ({header['license_name']})" if "license_name" in header else "")),
        ("build seed", str(recipe.get("seed", 0))),
    ]
    for stage, p in prov.items():
        prov_rows.append((stage, "`" + json.dumps(_no_paths(p), sort_keys=True, default=str) + "`"))
    sections = {key: fn(recipe, stages) for spec in registered() for key, fn in spec.card_sections.items()}
    body = Template((shipped("cards") / TEMPLATE).read_text(encoding="utf-8")).substitute(
        **sections,
        yaml=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(),
        title=f"{recipe.get('name')}: synthetic vision-language training data",
        description=recipe.get("description", ""),
        code_version=manifest.get("code_version", ""),
        recipe_name=recipe.get("name"),
        fingerprint=manifest.get("fingerprint"),
        load_path=out.name,
        configs_table=_table(
            [(i["config_name"], i["splits"][0]["num_examples"], about[i["config_name"]]) for i in infos],
            ("config", "rows", "what it holds"),
        ),
        stages_text=_stages_text(recipe, stages) + _diversity_text(manifest.get("diversity", {}))
        + _balance_text(manifest.get("diversity", {}).get("seed_balance")),
        provenance_table=_table(prov_rows, ("what", "value")),
        seeds_table=seeds_table(manifest.get("seeds", {})) + mix_text(manifest.get("seeds", {}).get("mix"),
                                                                       stages.get("captions", {}).get("delivered")),
        rejections_table=rejections_table(stages),
        plots=_plots(out),
    )
    write_text(out / CARD, body)


def seeds_table(seeds: dict[str, Any]) -> str:
    """One row per seed source: read, kept, filtered and every hygiene change (only the non-zero ones)."""
    rows = []
    for source, st in seeds.items():
        if not isinstance(st, dict) or source in ("balance", "mix"):
            continue  # "selected": the count after merging and --limit; the selection and the mix: below
        changes = {k: v for k, v in st.items() if k not in ("read", "kept") and v}
        rows.append((f"`{source}`", st.get("read", 0), st.get("kept", 0),
                     ", ".join(f"{k}: {v}" for k, v in changes.items()) or "none"))
    table = _table(rows, ("source", "read", "kept", "filtered and cleaned"))
    return f"{table}\n\n{seeds.get('selected', 0)} seeds selected after merging the sources (and `limit`)."


def mix_text(mix: dict[str, Any] | None, delivered: dict[str, Any] | None) -> str:
    """The seed mix (mix.py): per source and per domain, asked (share), selected and delivered (accepted
    captions), each source's content hash and licence, the lists a vocabulary came from, and any shortfall."""
    if not mix:
        return ""
    delivered = delivered or {}
    by_source, by_domain = delivered.get("sources") or {}, delivered.get("domains") or {}
    total = sum(by_source.values()) or 1
    rows, lists = [], []
    for s in mix.get("sources", []):
        if s["kind"] == "domains":
            got = sum(by_domain.values())  # domain rows carry their domain, not the file: one domain source
            lists += (s.get("origin") or {}).get("origins") or []
        else:
            got = by_source.get(s.get("source"), 0)
        share = "-" if s.get("share") is None else f"{s['share']:.2%}"
        rows.append((s["kind"], f"`{_short_path(s['path'])}`", share, s.get("available"), s.get("selected"), got,
                     f"{got / total:.1%}", f"`{(s.get('origin') or {}).get('sha256') or '-'}`",
                     s.get("license") or "unknown"))
    text = (f"\n\n**Seed mix** (`limit` {mix.get('limit')}; share = fraction of the limit the recipe asks; "
            "delivered = accepted Stage-1 captions):\n\n"
            + _table(rows, ("kind", "source", "share", "available", "selected", "delivered", "delivered share",
                            "sha256", "licence")))
    domains = sorted(set(mix.get("selected_by_domain") or {}) | set(by_domain))
    if domains:
        sel = mix.get("selected_by_domain") or {}
        text += "\n\nPer domain (label x template seeds):\n\n" + _table(
            [(d, sel.get(d, 0), by_domain.get(d, 0)) for d in domains], ("domain", "selected", "delivered"))
    if lists:
        text += "\n\nVocabulary lists: " + "; ".join(
            f"{o.get('name')} from {o.get('origin')} (licence: {o.get('license')})"
            + (f" {o['notice']}" if o.get("notice") else "") for o in lists) + "."
    for note in mix.get("notes") or []:
        text += f"\n\n> Note: {note}"
    return text


def _short_path(path: str) -> str:
    """A seed path on the card: builtin names and Hub ids as they are, a local file by its name only."""
    return path if path.startswith("builtin:") or not _is_path(path) else Path(path).name


def _stages_text(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    return "\n".join(spec.card_text(recipe, stages) for spec in registered() if spec.name in stages and spec.card_text)


def _diversity_text(div: dict[str, Any]) -> str:
    if not div.get("k") or div.get("top5_share") is None:
        return ""
    return (f"\n\n**Diversity and balance** (Synth²-style, `{artifact(REPORT)}`): {div.get('n_captions')} captions "
            f"in k={div.get('k')} k-means clusters; the 5 largest hold {div.get('top5_share', 0):.1%}; cluster-size "
            f"entropy {div.get('entropy', 0):.2f} (normalised {div.get('entropy_normalised', 0):.2f}); mean "
            f"per-caption type-token ratio {div.get('ttr', 0):.2f}.")


def _balance_text(sb: dict[str, Any] | None) -> str:
    """Balanced vs uniform seed selection (balance.py): the histograms the Synth² paper compares."""
    if not sb:
        return ""
    rows = []
    for key, what in (("seeds_uniform", "seeds, uniform draw (not built)"), ("seeds_balanced", "seeds, balanced"),
                      ("captions_balanced", "captions (accepted), balanced")):
        st = sb.get(key)
        if not st or st.get("top5_share") is None:
            continue
        sizes = st["cluster_sizes"]
        hist = " ".join(map(str, sizes[:20])) + (" ..." if len(sizes) > 20 else "")
        rows.append((what, sum(sizes), f"{st['top5_share']:.1%}", f"{st['entropy_normalised']:.3f}", hist))
    if not rows:
        return ""
    return (f"\n\n**Concept-balanced seeds**: {sb.get('available')} available seeds in k={sb.get('k')} k-means "
            "clusters; the limit was drawn round-robin across clusters instead of uniformly at random "
            f"(`{artifact(SEED_CLUSTERS)}`, `{artifact(REPORT)}` key `seed_balance`).\n\n"
            + _table(rows, ("selection", "rows", "top-5 share", "normalised entropy",
                            "cluster sizes, largest first")))


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


# ---- license, model names, seeds, task mix, rejections, plots ----------------------------------------------------
def _license(recipe: dict[str, Any]) -> dict[str, str]:
    """The recipe's `license` (a Hub license id; outputs of a model carry its terms, e.g. `gemma`), with
    `license_name` / `license_link` for `other`. Unknown when the recipe states none."""
    out = {"license": str(recipe.get("license") or "unknown")}
    for key in ("license_name", "license_link"):
        if recipe.get(key):
            out[key] = str(recipe[key])
    return out


def _is_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or Path(spec).expanduser().exists()


def llm_name(llm: dict[str, Any]) -> str:
    """The LLM by its Hub id (and GGUF file), or "a local model" when only a path is known: never the path."""
    from unicorn_datasets.generation.hf_models import OFFLINE_GEMMA, OFFLINE_GEMMA_HUB_ID

    model = str(llm.get("model") or "")
    hub = llm.get("hub_id") or (OFFLINE_GEMMA_HUB_ID if model == OFFLINE_GEMMA else None)
    if hub:
        return f"[`{hub}`](https://huggingface.co/{hub})" + (f" (`{llm['file']}`)" if llm.get("file") else "")
    if model and not _is_path(model):
        return f"`{model}`"
    return "a local model (no Hub id recorded; identified by the weights hash below)"


def _no_paths(value: Any) -> Any:
    """Provenance for the card with local file paths left out (they name the builder's disk, not the model)."""
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_no_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return "(local path)"
    return value


def rejections_table(stages: dict[str, Any]) -> str:
    rows = []
    for stage in (spec.name for spec in registered() if spec.reject_input):
        s = stages.get(stage)
        if not s:
            continue
        n = s.get("rows_in", 0) or 1
        final = s.get("rejected", {})
        tried = s.get("attempt_reasons", {})
        for reason in sorted(set(final) | set(tried)):
            rows.append((stage, f"`{reason}`", final.get(reason, 0), f"{final.get(reason, 0) / n:.1%}",
                         tried.get(reason, 0)))
        rows.append((stage, "**accepted**", s.get("rows_out", 0), f"{s.get('rows_out', 0) / n:.1%}", ""))
    return _table(rows, ("stage", "reason", "rows rejected", "rate (of rows in)", "failed attempts (retries included)"))


PLOTS = (("cluster_sizes.png", "k-means cluster sizes of the captions"), ("caption_lengths.png", "caption lengths"))


def _plots(out: Path) -> str:
    """Images under artifacts/, linked relatively so the Hub renders them in the card."""
    shown = [f"![{alt}](artifacts/{name})" for name, alt in PLOTS if (out / "artifacts" / name).exists()]
    return "\n\n".join(shown) if shown else "(no plots: install matplotlib and rerun `unicorn report`)"
