"""Push a built dataset folder to the Hub, exactly the part of it that is a dataset repository.

What goes up: README.md (the card with its YAML `configs:`), the Parquet files of the config
folders, and artifacts/. What never goes up: the work area `.build/` (parts, caches, lock),
hidden and temporary files (`.name.tmp-<pid>`), lock files. A `.py` file is refused outright:
datasets 5 does not run loading scripts, and a script in the repo breaks `load_dataset` for
everyone.

In huggingface_hub 2.x `upload_folder` is itself the large-folder path: with `hf_xet` installed it
streams, commits in batches and resumes when re-run (`upload_large_folder` no longer exists).
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from unicorn_datasets.dataset.layout import ARTIFACTS, CARD, LOCK, WORK

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class PushError(RuntimeError):
    """The push did not reach the Hub or the Hub refused it."""


# ---- the card's configs ----------------------------------------------------------------------


def read_card_configs(folder: str | Path) -> list[dict[str, Any]]:
    """The `configs:` of OUT/README.md, normalised to `[{config_name, data_files: [{split, path: [globs]}]}]`.

    Accepts every shape datasets accepts for `data_files`: a glob, a list of globs, a list of
    `{split, path}` (path a glob or a list), or a `{split: glob(s)}` mapping.
    """
    card = Path(folder) / CARD
    if not card.is_file():
        raise ValueError(f"{card} is missing: a dataset folder needs a card with YAML `configs:`")
    m = _FRONT_MATTER.match(card.read_text(encoding="utf-8"))
    if not m:
        raise ValueError(f"{card} has no YAML front matter (a block between '---' lines at the top)")
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{card}: the YAML front matter does not parse: {e}") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not configs:
        raise ValueError(f"{card}: YAML front matter has no `configs:` list")
    out, seen = [], set()
    for i, c in enumerate(configs):
        if not isinstance(c, dict) or not isinstance(c.get("config_name"), str):
            raise ValueError(f"{card}: configs[{i}] has no `config_name`")
        name = c["config_name"]
        if name in seen:
            raise ValueError(f"{card}: config '{name}' is listed twice")
        seen.add(name)
        files = _normalise_data_files(c.get("data_files"), card, name)
        out.append({"config_name": name, "data_files": files})
    return out


def _as_globs(value: Any, card: Path, name: str) -> list[str]:
    globs = [value] if isinstance(value, str) else value
    if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
        raise ValueError(f"{card}: config '{name}' has an invalid data_files path {value!r}")
    return globs


def _normalise_data_files(data_files: Any, card: Path, name: str) -> list[dict[str, Any]]:
    if data_files is None:
        raise ValueError(f"{card}: config '{name}' has no `data_files`")
    if isinstance(data_files, dict):
        return [{"split": str(s), "path": _as_globs(p, card, name)} for s, p in data_files.items()]
    all_str = isinstance(data_files, list) and all(isinstance(d, str) for d in data_files)
    if isinstance(data_files, str) or all_str:
        return [{"split": "train", "path": _as_globs(data_files, card, name)}]
    if isinstance(data_files, list):
        out = []
        for d in data_files:
            if not isinstance(d, dict) or "path" not in d:
                raise ValueError(f"{card}: config '{name}' has a data_files entry without `path`: {d!r}")
            out.append({"split": str(d.get("split", "train")), "path": _as_globs(d["path"], card, name)})
        return out
    raise ValueError(f"{card}: config '{name}' has data_files of an unsupported shape: {data_files!r}")


def config_files(folder: str | Path, config: str, split: str = "train") -> list[Path]:
    """The files a config's split resolves to, read from the card; `<config>/*.parquet` without a card."""
    folder = Path(folder)
    try:
        configs = {c["config_name"]: c for c in read_card_configs(folder)}
    except ValueError:
        configs = {}
    if config not in configs:
        return sorted(p for p in (folder / config).glob("*.parquet") if not p.name.startswith("."))
    pushed = set(files_to_push(folder, check_scripts=False))
    rels: set[str] = set()
    for entry in configs[config]["data_files"]:
        if entry["split"] == split:
            rels.update(r for g in entry["path"] for r in _glob(folder, g) if r in pushed)
    return [folder / r for r in sorted(rels)]


def _glob(folder: Path, pattern: str) -> list[str]:
    # Python's glob skips dot-files for `*` and `**`, like the Hub's resolver does.
    return [Path(p).as_posix() for p in glob.glob(pattern, root_dir=folder, recursive=True)
            if (folder / p).is_file()]


# ---- what goes up ----------------------------------------------------------------------------


def _is_hidden(rel: Path) -> bool:
    # covers .build/, .git/, .cache/ and temporary files named `.name.tmp-<pid>`
    return any(part.startswith(".") for part in rel.parts)


def _is_lock(rel: Path) -> bool:
    return rel.name == LOCK or rel.suffix == ".lock"


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # never descend into .build/ or .git/
        for f in sorted(files):
            yield (Path(root) / f).relative_to(folder)


def files_to_push(folder: str | Path, *, check_scripts: bool = True) -> list[str]:
    """Relative POSIX paths of OUT that belong on the Hub, sorted.

    README.md, `*.parquet` (the config folders' shards), and everything in artifacts/;
    nothing hidden, no temporary files, no locks. Anything else in OUT stays local. Raises
    ValueError when a `.py` file is present, since datasets 5 refuses repos holding scripts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    out: list[str] = []
    scripts: list[str] = []
    for rel in _walk(folder):
        if _is_hidden(rel) or _is_lock(rel) or not (folder / rel).is_file():
            continue
        if rel.suffix == ".py":
            scripts.append(rel.as_posix())
            continue
        if rel.as_posix() == CARD or rel.parts[0] == ARTIFACTS or rel.suffix == ".parquet":
            out.append(rel.as_posix())
    if scripts and check_scripts:
        raise ValueError(
            f"{folder} holds Python files ({', '.join(scripts[:5])}): dataset scripts are not supported by "
            "datasets 5 and would break loading from the Hub; remove them "
            "(data must be Parquet + README configs)"
        )
    return sorted(out)


def build_in_progress(folder: str | Path) -> str | None:
    """The lock holder's note when a build holds OUT/.build/lock right now, else None.

    A shared lock can be taken unless a build holds its exclusive one; flock dies with its
    process, so a killed build leaves no stale lock behind.
    """
    lock = Path(folder) / WORK / LOCK
    if not lock.exists():
        return None
    with open(lock) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd.read().strip() or "pid unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def check_pushable(folder: str | Path) -> list[str]:
    """Raise ValueError naming what is wrong, or return `files_to_push(folder)`.

    Checks: no build running, no `.py`, a card with YAML `configs:`, and every data_files glob
    of every config matching at least one Parquet file that would be pushed (and nothing else,
    since datasets uses one reader for all files of a config).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    holder = build_in_progress(folder)
    if holder:
        raise ValueError(f"a build is still writing into {folder} ({holder}); "
                         "wait for it to finish before pushing")
    files = files_to_push(folder)
    pushed = set(files)
    for c in read_card_configs(folder):
        for entry in c["data_files"]:
            for pattern in entry["path"]:
                matched = sorted(r for r in _glob(folder, pattern) if r in pushed)
                if not any(r.endswith(".parquet") for r in matched):
                    raise ValueError(
                        f"{folder / CARD}: config '{c['config_name']}' split '{entry['split']}' path "
                        f"'{pattern}' matches no Parquet file in {folder} (was the build finished?)"
                    )
                other = [r for r in matched if not r.endswith(".parquet")]
                if other:
                    raise ValueError(
                        f"{folder / CARD}: config '{c['config_name']}' path '{pattern}' also matches "
                        f"non-Parquet files ({', '.join(other[:3])}); narrow the glob to *.parquet"
                    )
    return files


# ---- push ------------------------------------------------------------------------------------


def _redact(text: str, token: str | None) -> str:
    text = re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)
    return text.replace(token, "***") if token else text


def push(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         revision: str | None = None, commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Create (if needed) the dataset repo `repo_id` and upload the pushable part of `folder`.

    The token comes from `token`, else HF_TOKEN or the saved login (huggingface_hub's own
    lookup); it is never printed or logged. Parquet shards and artifacts on the Hub that the
    folder no longer has are deleted in the same commit, so a rebuilt dataset with fewer shards
    does not keep serving stale ones. `endpoint` defaults to HF_ENDPOINT read at call time.
    Returns the dataset URL. Network or Hub failures raise PushError (a RuntimeError).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    folder = Path(folder)
    files = check_pushable(folder)
    config_dirs = sorted({f.split("/", 1)[0] for f in files if "/" in f} - {ARTIFACTS})
    # exact paths as fnmatch patterns: escape glob characters a file name might hold
    allow = [glob.escape(f) for f in files]
    delete = [f"{glob.escape(d)}/*.parquet" for d in config_dirs] + [f"{ARTIFACTS}/*"]
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if not token and not get_token():  # fail before the network: an anonymous push only earns a 401
        raise PushError(f"no Hub token to push {repo_id}: pass --token, set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    step = "creating the repo"
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        if revision:
            step = f"creating branch '{revision}'"
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        step = "uploading"
        api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=folder, revision=revision,
            allow_patterns=allow, delete_patterns=delete,
            commit_message=commit_message or f"Upload {len(files)} files with unicorn-datasets",
        )
    except LocalTokenNotFoundError:
        raise PushError(
            f"no Hub token to push {repo_id}: pass --token, set HF_TOKEN or run `hf auth login`"
        ) from None
    except OfflineModeIsEnabled:
        msg = f"cannot push {repo_id}: HF_HUB_OFFLINE is set; unset it to reach {endpoint}"
        raise PushError(msg) from None
    except (HTTPError, OSError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "the token is invalid or expired",
                403: "the token has no write access to this namespace",
                404: "the namespace does not exist or the token cannot see it"}.get(
            status, f"check the network, the endpoint {endpoint}, and that the token can write to it")
        detail = _redact(f"{type(e).__name__}: {e}", token)
        # `from None`: the chained original could carry request details; its redacted text is enough
        msg = f"push of {folder} to dataset {repo_id} failed while {step}: {detail}; {hint}"
        raise PushError(msg) from None
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url
