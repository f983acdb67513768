"""What goes to the Hub: the pushable set loads with the viewer's loader, the rest stays home."""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.dataset import hub
from unicorn_datasets.dataset.hub import check_pushable, config_files, files_to_push, push

CARD = """---
configs:
- config_name: captions
  data_files:
  - split: train
    path: captions/train-*.parquet
- config_name: pretrain
  data_files:
  - split: train
    path: pretrain/train-*.parquet
---
# tiny
"""
D = 8


def _make_out(root: Path) -> Path:
    out = root / "OUT"
    (out / "captions").mkdir(parents=True)
    (out / "pretrain").mkdir()
    (out / "artifacts").mkdir()
    (out / "README.md").write_text(CARD)
    ids = [f"c{i}" for i in range(6)]
    caps = [f"a photo of thing {i}" for i in range(6)]
    pq.write_table(pa.table({"id": ids, "seed": ["s"] * 6, "source": ["demo"] * 6, "caption": caps}),
                   out / "captions" / "train-00000-of-00001.parquet")
    emb = np.random.default_rng(0).standard_normal((6, D)).astype(np.float16)
    conv = [[{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": c}] for c in caps]
    emb_col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), D)
    for part, sl in ((0, slice(0, 4)), (1, slice(4, 6))):
        pq.write_table(pa.table({"id": ids[sl], "caption": caps[sl], "conversations": conv[sl],
                                 "embedding": emb_col[sl]}),
                       out / "pretrain" / f"train-{part:05d}-of-00002.parquet")
    np.save(out / "artifacts" / "text_mean.npy", np.zeros(D, np.float32))
    (out / "artifacts" / "build_manifest.json").write_text("{}")
    # work area and leftovers that must never reach the Hub
    (out / ".build" / "captions").mkdir(parents=True)
    (out / ".build" / "lock").write_text("pid 1\n")
    (out / ".build" / "state.json").write_text("{}")
    pq.write_table(pa.table({"x": [1]}), out / ".build" / "captions" / "part-00000.parquet")
    (out / "captions" / ".train-00000-of-00001.parquet.tmp-123").write_bytes(b"junk")
    (out / ".hidden").write_text("x")
    (out / "stray.lock").write_text("x")
    return out


def test_pushable_set_loads_every_config_like_the_viewer(tmp_path: Path) -> None:
    import datasets

    out = _make_out(tmp_path)
    files = check_pushable(out)
    assert files == files_to_push(out)
    assert files == [
        "README.md", "artifacts/build_manifest.json", "artifacts/text_mean.npy",
        "captions/train-00000-of-00001.parquet",
        "pretrain/train-00000-of-00002.parquet", "pretrain/train-00001-of-00002.parquet",
    ]
    assert not any(f.startswith(".build") or "/." in f or f.endswith(".lock") for f in files)
    copy = tmp_path / "copy"
    for f in files:
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / f, copy / f)
    for config in ("captions", "pretrain"):
        ds = datasets.load_dataset(str(copy), config, split="train", cache_dir=str(tmp_path / "cache"))
        expected = pa.concat_tables([pq.read_table(p) for p in config_files(out, config)])
        assert ds.num_rows == expected.num_rows == 6
        assert ds.column_names == expected.column_names
        assert ds["id"] == expected.column("id").to_pylist()
    pre = datasets.load_dataset(str(copy), "pretrain", split="train", cache_dir=str(tmp_path / "cache"))
    assert pre.features["embedding"].length == D
    assert len(pre[0]["embedding"]) == D


def test_python_file_is_refused(tmp_path: Path) -> None:
    out = _make_out(tmp_path)
    (out / "unicorn.py").write_text("import datasets\n")
    with pytest.raises(ValueError, match=r"unicorn\.py.*not supported"):
        files_to_push(out)
    with pytest.raises(ValueError, match="not supported"):
        check_pushable(out)


def test_config_glob_without_files_is_refused(tmp_path: Path) -> None:
    out = _make_out(tmp_path)
    (out / "README.md").write_text(CARD.replace("configs:\n", "configs:\n- config_name: instruct\n"
                                                "  data_files:\n  - split: train\n"
                                                "    path: instruct/train-*.parquet\n"))
    with pytest.raises(ValueError, match=r"'instruct'.*instruct/train-\*\.parquet.*no Parquet"):
        check_pushable(out)


def test_card_without_configs_is_refused(tmp_path: Path) -> None:
    out = _make_out(tmp_path)
    (out / "README.md").write_text("# no yaml\n")
    with pytest.raises(ValueError, match="front matter"):
        check_pushable(out)
    (out / "README.md").unlink()
    with pytest.raises(ValueError, match="README.md is missing"):
        check_pushable(out)


def test_running_build_blocks_push(tmp_path: Path) -> None:
    out = _make_out(tmp_path)
    with open(out / ".build" / "lock", "a+") as fd:  # what BuildRepo.acquire_lock holds during a build
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="still writing"):
            check_pushable(out)
        fcntl.flock(fd, fcntl.LOCK_UN)
    check_pushable(out)  # released (or the build died): pushable again


def test_push_to_unreachable_endpoint_fails_clearly_without_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    out = _make_out(tmp_path)
    secret = "hf_TestSecretToken0123456789abcdef"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import time
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        push(out, "me/unicorn", token=secret)
    assert time.monotonic() - t0 < 15
    msg = str(info.value)
    assert isinstance(info.value, hub.PushError)
    assert "me/unicorn" in msg and "127.0.0.1:9" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    captured = capsys.readouterr()
    for text in (msg, captured.out, captured.err, caplog.text):
        assert secret not in text


def test_push_in_offline_mode_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    out = _make_out(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"me/unicorn.*(HF_HUB_OFFLINE|offline)"):
        push(out, "me/unicorn", token="hf_TestSecretToken0123456789abcdef", endpoint="http://127.0.0.1:9")


def test_push_without_any_token_says_how_to_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _make_out(tmp_path)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(RuntimeError, match=r"no Hub token to push me/unicorn.*HF_TOKEN"):
        push(out, "me/unicorn", endpoint="http://127.0.0.1:9")
