"""Every bad input a user can hand `unicorn build` ends in one line naming the file, line and column
(or the flag) and a non-zero exit, with nothing written; or it is accepted correctly.

In-process through the real command line (`cli.main`); test_build.py checks the exit code of a real process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.cli import EXIT_BUILD, EXIT_INPUT, main

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


def _write(path: Path, content: bytes | str | pa.Table | None) -> None:
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.mkdir()


def _build(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(["build", "--recipe", "demo", "--llm", "/nonexistent", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


BAD_SEEDS = [
    ("folder", None, None, "folder: cannot load as a dataset"),
    ("photo.txt", PNG, None, "photo.txt:1:"),
    ("nul.txt", b"A dog on a beach.\nA cat\x00 on a mat.\n", None, "nul.txt:2:6: NUL byte"),
    ("utf16_no_bom.txt", "A dog on a beach.\n".encode("utf-16-le"), None, "utf16_no_bom.txt:1:2: NUL byte"),
    ("latin1.txt", b"A dog on a beach.\nA caf\xe9 outside.\n", None, "latin1.txt:2:6: not UTF-8 (byte 0xe9)"),
    ("blank.txt", "\n   \n\t\n\n", None, "blank.txt: no usable seeds"),
    ("huge.txt", "A cat on a mat.\n" + "word " * 220_000 + "\n", None, "huge.txt:2: line is 1,100,000 bytes"),
    ("no_col.csv", "id,text\n1,A red car parked on a street.\n", "caption", "no_col.csv: no column 'caption'"),
    ("short_row.csv", "id,caption\n1,A red car parked.\n2\n", None, "short_row.csv:3: no value for column 'caption'"),
    ("no_col.jsonl", '{"caption": "A red car parked."}\n{"text": "A blue bus."}\n', None,
     "no_col.jsonl:2: no column 'caption'"),
    ("bad.jsonl", '{"caption": "A red car parked."}\n{"caption": "A blue\n', None, "bad.jsonl:2:13: invalid JSON"),
    ("no_col.parquet", pa.table({"text": ["A red car parked."]}), "caption", "no_col.parquet: no column 'caption'"),
    ("fake.parquet", b"not parquet at all", None, "fake.parquet: not a readable Parquet file"),
    ("seeds.xlsx", b"PK\x03\x04", None, "unsupported seed file type '.xlsx'"),
]


@pytest.mark.parametrize("name, content, column, expect", BAD_SEEDS, ids=[b[0] for b in BAD_SEEDS])
def test_bad_seed_file_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, content, column: str | None, expect: str
) -> None:
    path = tmp_path / name
    _write(path, content)
    out = tmp_path / "out"
    rc, err = _build(["--out", str(out), "--seeds", str(path), *(["--seed-column", column] if column else [])], capsys)
    assert rc == EXIT_INPUT
    assert expect in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--limit", "0"], ["--limit", "-3"], ["--shard-size", "0"],
                                   ["--batch-size", "0"], ["--set", "limit=ten"]])
def test_counts_below_one_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str]) -> None:
    out = tmp_path / "out"
    rc, err = _build(["--out", str(out), *flags], capsys)
    assert rc == EXIT_INPUT and len(err.splitlines()) == 1, err
    assert re.search(r"'(limit|shard_size|llm\.batch_size)' must be (>= 1|int)", err), err
    assert not out.exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


@pytest.mark.parametrize("holds", [{"README.md": "# my project\n"}, {"data.csv": "a,b\n1,2\n", "notes": None},
                                   {"captions": None}])
def test_out_folder_we_did_not_build_is_never_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture, holds: dict[str, str | None]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in holds.items():
        _write(out / name, text)
    before = _snapshot(out)
    rc, err = _build(["--out", str(out), "--limit", "2"], capsys)
    assert rc == EXIT_BUILD and "not a unicorn-datasets build" in err and len(err.splitlines()) == 1, err
    assert _snapshot(out) == before


def test_out_that_is_a_file_is_never_touched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "file.txt"
    out.write_text("keep me\n")
    rc, err = _build(["--out", str(out), "--limit", "2"], capsys)
    assert rc == EXIT_BUILD and "exists and is not a folder" in err and len(err.splitlines()) == 1, err
    assert out.read_text() == "keep me\n"


def test_odd_but_valid_seed_files_are_accepted(tmp_path: Path) -> None:
    """Accepted correctly: BOM + CRLF, UTF-16 with a BOM, a blank-line-padded JSONL, a folder of text files."""
    from unicorn_datasets.seeds.sources import SeedStats, load_caption_seeds

    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfA dog on a beach.\r\n\r\nA cat on a mat.\r\n")
    (tmp_path / "b.txt").write_bytes("A dog on a beach.\nA cat on a mat.\n".encode("utf-16"))
    (tmp_path / "c.jsonl").write_text("\n" + json.dumps({"caption": "A dog on a beach."}) + "\n\n"
                                      + json.dumps({"caption": "A cat on a mat."}) + "\n")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "part1.txt").write_text("A dog on a beach.\nA cat on a mat.\n")
    for src in ("a.txt", "b.txt", "c.jsonl", "texts"):
        stats = SeedStats()
        seeds = [s.seed for s in load_caption_seeds(str(tmp_path / src), stats=stats)]
        assert seeds == ["A dog on a beach.", "A cat on a mat."], src


def test_a_missing_package_is_one_clear_line(tmp_path: Path) -> None:
    # A broken install (here: datasets and pyarrow absent) still ends in one line, not a traceback from
    # the error report itself (which reads pyarrow-backed error types).
    code = ("import sys\nfrom unicorn_datasets.cli import main\n"
            "sys.modules['datasets'] = sys.modules['pyarrow'] = None\n"
            f"sys.exit(main(['build', '--recipe', 'demo', '--out', {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_BUILD, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "'datasets' is not installed" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
