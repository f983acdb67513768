"""A damaged work area heals or is named: a truncated part is made again, a truncated published config is
assembled again from its parts, a damaged state.json is named with its path and `--overwrite` recovers it.
Every healed build ends with exactly the dataset of an undamaged one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_FLAGS, run_build

from unicorn_datasets.dataset.repo import BuildRepo, RepoError


def _args(out: Path, tiny_llm: Path, *extra: str) -> list[str]:
    return ["--recipe", "demo", "--out", str(out), "--limit", "6", "--llm", str(tiny_llm), "--stages", "captions",
            *TINY_FLAGS, "--shard-size", "2", *extra]


def _captions(out: Path) -> list[dict]:
    return sorted((r for f in sorted((out / "captions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()),
                  key=lambda r: r["id"])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def reference(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    r = run_build(_args(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _captions(out), "the reference build accepted no caption: the healing below would prove little"
    return out


def _copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("lock"))
    return out


def test_a_truncated_published_config_is_assembled_again_from_its_parts(
    reference: Path, tiny_llm: Path, tmp_path: Path
) -> None:
    out = _copy(reference, tmp_path)
    published = next((out / "captions").glob("*.parquet"))
    _truncate(published)
    r = run_build(_args(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"published captions/{published.name} is damaged" in r.stderr
    # no generation (the parts were intact): every captions shard was finished earlier, none ran
    assert "0 to run" in r.stderr and "request(s) sent" not in r.stderr
    assert _captions(out) == _captions(reference)


def test_a_truncated_part_is_made_again(reference: Path, tiny_llm: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path)
    _truncate(out / ".build" / "captions" / "part-00001.parquet")
    r = run_build(_args(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "part .build/captions/part-00001.parquet is damaged" in r.stderr
    assert "2 finished earlier (skipped), 1 to run" in r.stderr  # only the damaged shard is generated again
    assert _captions(out) == _captions(reference)


def test_a_part_with_a_damaged_sidecar_is_made_again(reference: Path, tiny_llm: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path)
    (out / ".build" / "captions" / "part-00000.json").write_text('{"rows": 2, "by')
    r = run_build(_args(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "part .build/captions/part-00000.parquet is damaged (its sidecar part-00000.json is not valid JSON" \
        in r.stderr
    assert _captions(out) == _captions(reference)


def test_a_damaged_state_is_named_and_overwrite_recovers_it(reference: Path, tiny_llm: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path)
    state = out / ".build" / "state.json"
    state.write_text('{"fingerprint": "\x01')
    r = run_build(_args(out, tiny_llm))
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("unicorn: error:")]
    assert len(errors) == 1 and str(state) in errors[0] and "--overwrite" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    r = run_build(_args(out, tiny_llm, "--overwrite"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _captions(out) == _captions(reference)


def test_overwrite_accepts_a_folder_of_ours_whose_state_is_gone(reference: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path)
    (out / ".build" / "state.json").unlink()
    with pytest.raises(RepoError, match="not a unicorn-datasets build"):
        BuildRepo(out).check_target(overwrite=False)
    BuildRepo(out).check_target(overwrite=True)  # only our names beside .build/: --overwrite starts it again
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RepoError, match="notes.txt"):
        BuildRepo(out).check_target(overwrite=True)
