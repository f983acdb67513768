"""Learned text->image-embedding priors: known-truth pairs, eval numbers by hand, refusals, save/load, and a
tiny build with --transfer prior (same embeddings under 1 and 2 processes, equal to an independent sample)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, run_build

from unicorn_datasets.prior import PriorError, check_encoder, load_prior, make_prior
from unicorn_datasets.prior.metrics import (
    evaluate,
    frechet_distance,
    frechet_from_moments,
    paired_cosine,
    recall_at_k,
)
from unicorn_datasets.prior.train import data_fingerprint, fit_and_evaluate
from unicorn_datasets.randomness import row_seeds
from unicorn_datasets.transfer.methods import apply_transfer, l2_normalize

FAST_FLOW = {"hidden": 64, "layers": 3, "max_epochs": 40, "patience": 8, "batch_size": 64, "lr": 3e-3, "steps": 16}
ENC = {"encoder": "fake", "fingerprint": "sha256:abc", "dim": 8}


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def _text(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, d)) + 0.5)  # a shared offset: text has a mean, like real encoders


def _held_out(text: np.ndarray, image: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out text, held-out real image side as the VLM sees it, mean-shift output on the held-out text)."""
    t, v = text[-k:], l2_normalize(image[-k:])
    return t, v - v.mean(0), apply_transfer(t, "mean-shift", mean=t.mean(0))


# -- known truth -------------------------------------------------------------------------------
def test_linear_prior_recovers_a_rotation_that_mean_shift_cannot() -> None:
    rng = np.random.default_rng(0)
    d, n = 16, 700
    text = _text(rng, n, d)
    image = l2_normalize(1.7 * text @ _rotation(rng, d) + 0.4 + 0.01 * rng.standard_normal((n, d)))
    prior = make_prior("linear").fit(text[:-200], image[:-200], val_text=text[-300:-200], val_image=image[-300:-200])
    t, real, shifted = _held_out(text, image, 200)
    learned = evaluate(prior.sample(t)[:, 0], real)
    baseline = evaluate(shifted, real)
    assert learned["paired_cosine"] > 0.95 and learned["recall@1"] > 0.9
    assert baseline["paired_cosine"] < 0.3 and baseline["recall@1"] < 0.1
    assert learned["frechet"] < baseline["frechet"] / 5


@pytest.fixture(scope="module")
def piecewise() -> tuple[np.ndarray, np.ndarray]:
    """Nonlinear truth: one rotation on one side of a hyperplane, another rotation on the other."""
    rng = np.random.default_rng(0)
    d, n = 8, 1200
    text = _text(rng, n, d)
    q1, q2, a = _rotation(rng, d), _rotation(rng, d), rng.standard_normal(d)
    side = text @ a > np.median(text @ a)
    image = np.where(side[:, None], text @ q1, text @ q2) + 0.3 + 0.02 * rng.standard_normal((n, d))
    return text, l2_normalize(image)


def test_flow_prior_learns_a_nonlinear_relation_the_linear_map_only_averages(piecewise) -> None:
    text, image = piecewise
    flow = make_prior("flow", **FAST_FLOW).fit(text[:-200], image[:-200], seed=0)
    linear = make_prior("linear").fit(text[:-200], image[:-200])
    t, real, shifted = _held_out(text, image, 200)
    f = evaluate(flow.sample(t, seeds=row_seeds([str(i) for i in range(200)], 0))[:, 0], real)
    lin, ms = evaluate(linear.sample(t)[:, 0], real), evaluate(shifted, real)
    assert f["paired_cosine"] > lin["paired_cosine"] + 0.08 and f["paired_cosine"] > ms["paired_cosine"] + 0.5
    assert f["recall@1"] > 0.5 and f["recall@1"] > 2 * lin["recall@1"] and ms["recall@1"] < 0.05
    assert f["frechet"] < lin["frechet"] / 3
    assert flow.meta["training"]["best_epoch"] >= 1  # it learned past the first epoch


def test_flow_prior_draws_several_plausible_images_per_caption() -> None:
    """Multimodal truth: image = +R t or -R t at random. The flow's samples land near one of the two modes
    (both appear for the same caption); the linear map can only return their average, about 0."""
    rng = np.random.default_rng(1)
    d, n = 8, 1200
    text = _text(rng, n, d)
    r = _rotation(rng, d)
    image = l2_normalize(np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None] * (text @ r))
    flow = make_prior("flow", **FAST_FLOW).fit(text[:1000], image[:1000], seed=0)
    probe = text[1000:1020]
    samples = flow.sample(probe, seeds=list(range(20)), n=16)
    assert samples.shape == (20, 16, d)
    plus = l2_normalize(probe @ r - image[:1000].mean(0))
    cos = np.einsum("ind,id->in", l2_normalize(samples.reshape(-1, d)).reshape(20, 16, d), plus)
    assert np.mean(np.abs(cos) > 0.8) > 0.5
    assert np.mean(cos > 0.8) > 0.15 and np.mean(cos < -0.8) > 0.15
    both = np.mean([(c > 0.8).any() and (c < -0.8).any() for c in cos])
    assert both > 0.5
    linear = make_prior("linear").fit(text[:1000], image[:1000]).sample(probe)[:, 0]
    assert np.linalg.norm(linear, axis=1).mean() < 0.3


# -- eval numbers by hand ----------------------------------------------------------------------
def test_cosine_and_recall_on_a_case_computed_by_hand() -> None:
    real = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gen = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # cosines: row 0 -> real 0: 1; row 1 -> real 1: 1/sqrt2; row 2 -> real 2: 0
    assert paired_cosine(gen, real) == pytest.approx((1 + 2**-0.5 + 0) / 3)
    # row 0: own 1.0, best -> rank 0. row 1: sims (0.707, 0.707, -0.707), a tie with real 0 -> rank 0.
    # row 2: sims (0, 1, 0), real 1 beats its own 0 -> rank 1.
    assert recall_at_k(gen, real, ks=(1, 2)) == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0}
    assert recall_at_k(gen, real, ks=(1,), chunk=1) == {"recall@1": pytest.approx(2 / 3)}  # chunking changes nothing


def test_frechet_matches_the_closed_form_of_two_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    # commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2 = 5 + (1 + 1 + 6.25)
    expected = 5.0 + (1.0 + 1.0 + 6.25)
    assert frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q = _rotation(np.random.default_rng(3), 3)  # a common rotation changes nothing (non-diagonal matrices)
    rotated = frechet_from_moments(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)
    c = np.diag(a)  # rank-deficient and identical: exactly 0, never negative or complex
    assert frechet_from_moments(mu1, c, mu1, c) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)  # from samples: converges to the closed form
    x = rng.standard_normal((200_000, 3)) * np.sqrt(a) + mu1
    y = rng.standard_normal((200_000, 3)) * np.sqrt(b) + mu2
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.01)


# -- refusals, save / load ---------------------------------------------------------------------
def test_a_prior_for_another_dimension_or_encoder_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prior = make_prior("linear").fit(_text(rng, 50, 8), _text(rng, 50, 8))
    prior.meta["encoder"] = ENC
    check_encoder(prior, dict(ENC))
    with pytest.raises(PriorError, match="maps 8-d text embeddings but encoder 'minilm' gives 384-d"):
        check_encoder(prior, {"encoder": "minilm", "fingerprint": "sha256:abc", "dim": 384})
    with pytest.raises(PriorError, match="trained for encoder 'fake'"):
        check_encoder(prior, {**ENC, "fingerprint": "sha256:other"})
    with pytest.raises(PriorError, match="maps 8-d"):
        prior.sample(np.ones((2, 9)))
    with pytest.raises(PriorError, match="not a prior folder"):
        load_prior(tmp_path)
    prior.save(tmp_path / "p")
    with pytest.raises(PriorError, match="exists"):
        prior.save(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["weights_sha256"] = "sha256:0"
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PriorError, match="do not match the hash"):
        load_prior(tmp_path / "p")


@pytest.mark.parametrize("family", ["linear", "flow"])
def test_save_load_round_trip_gives_identical_samples(family: str, piecewise, tmp_path: Path) -> None:
    text, image = piecewise
    hyper = {**FAST_FLOW, "max_epochs": 3} if family == "flow" else {}
    prior = fit_and_evaluate(text[:300], image[:300], family, seed=0, **hyper)
    prior.meta["encoder"] = ENC
    prior.meta["training_data"] = {"n_pairs": 300, "fingerprint": data_fingerprint(["a"] * 300, image[:300])}
    prior.save(tmp_path / family)
    files = sorted(p.name for p in (tmp_path / family).iterdir())
    assert files == ["config.json", "eval.json", "weights.safetensors"]
    cfg = json.loads((tmp_path / family / "config.json").read_text())
    assert cfg["family"] == family and cfg["dim"] == 8 and cfg["encoder"] == ENC and "normalisation" in cfg
    assert cfg["training_data"]["fingerprint"].startswith("sha256:") and cfg["training"]["n_val"] == 30
    ev = json.loads((tmp_path / family / "eval.json").read_text())
    assert set(ev["methods"]) == {"none", "mean-shift", "c3", "prior"} and ev["n"] == 30
    assert cfg["comparison"]["split"] == "validation" and cfg["comparison"]["chosen"] == family
    again = load_prior(tmp_path / family)
    seeds = list(range(50, 70))
    a, b = prior.sample(text[-20:], seeds=seeds, n=3), again.sample(text[-20:], seeds=seeds, n=3)
    np.testing.assert_array_equal(a, b)
    # per-row noise: a row's sample does not depend on its batch
    np.testing.assert_allclose(again.sample(text[-5:], seeds=seeds[-5:], n=3), a[-5:], atol=1e-6)
    if family == "flow":
        assert not np.allclose(a[:, 0], a[:, 1])  # noise: several samples per caption differ


# -- the build --------------------------------------------------------------------------------
ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def minilm_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small flow prior for MiniLM, trained on shipped seed captions and a synthetic image side."""
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.seeds.sources import load_caption_seeds

    enc = load_encoder("minilm")
    caps = [s.seed for s in load_caption_seeds("builtin:open_domain")][:120]
    text = enc.encode_text(caps)
    rng = np.random.default_rng(0)
    image = l2_normalize(text @ _rotation(rng, 384) + 0.2)
    prior = fit_and_evaluate(text, image, "flow", seed=0, hidden=32, layers=2, max_epochs=2, steps=4)
    prior.meta["encoder"] = enc.describe()
    prior.meta["training_data"] = {"source": "test", "n_pairs": len(caps), "fingerprint": data_fingerprint(caps, image)}
    return prior.save(tmp_path_factory.mktemp("prior") / "flow")


def _args(out: Path, tiny_llm: Path, prior: Path) -> list[str]:
    return ["--recipe", "demo", "--out", str(out), "--limit", "6", "--llm", str(tiny_llm), "--stages",
            "captions,pretrain", *TINY_FLAGS, "--shard-size", "2", "--embedding-dtype", "float32",
            "--transfer", "prior", "--prior", str(prior)]


def _pretrain(out: Path) -> dict[str, np.ndarray]:
    from datasets import load_dataset

    return {r["id"]: np.asarray(r["embedding"]) for r in load_dataset(str(out), "pretrain", split="train")}


def test_build_with_a_prior_same_rows_under_one_and_two_processes(tiny_llm: Path, minilm_prior: Path,
                                                                  tmp_path: Path) -> None:
    from datasets import load_dataset

    from unicorn_datasets.encoders import load_encoder

    one, two = tmp_path / "one", tmp_path / "two"
    r = run_build(_args(one, tiny_llm, minilm_prior))
    assert r.returncode == 0, r.stderr[-3000:]
    r2 = run_build(_args(two, tiny_llm, minilm_prior), launcher=ACCELERATE_2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _pretrain(one), _pretrain(two)
    assert set(a) == set(b) and len(a) > 0
    for rid in a:
        np.testing.assert_allclose(a[rid], b[rid], atol=1e-5)
    # independent recomputation: encode the captions, sample the prior with the row seeds of stream "prior"
    caps = load_dataset(str(one), "captions", split="train")
    text = load_encoder("minilm").encode_text(caps["caption"])
    expected = load_prior(minilm_prior).sample(text, seeds=row_seeds(caps["id"], 0, stream="prior"))[:, 0]
    for rid, e in zip(caps["id"], expected):
        np.testing.assert_allclose(a[rid], e, atol=1e-4)
    card = (one / "README.md").read_text()
    assert "learned **flow prior**" in card and "| prior |" in card and "| mean-shift |" in card
    info = json.loads((one / "artifacts" / "transfer.json").read_text())
    assert info["method"] == "prior" and info["prior"]["evaluation"]["methods"]["prior"]["family"] == "flow"
    assert info["prior"]["comparison"]["chosen"] == "flow"


def test_build_refuses_a_prior_made_for_another_encoder(tiny_llm: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prior = make_prior("linear").fit(_text(rng, 50, 8), _text(rng, 50, 8))
    prior.meta["encoder"] = ENC
    folder = prior.save(tmp_path / "p8")
    r = run_build(_args(tmp_path / "out", tiny_llm, folder))
    assert r.returncode == 4
    assert "unicorn: error: the prior maps 8-d text embeddings but encoder 'minilm' gives 384-d" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_build(_args(tmp_path / "out2", tiny_llm, tmp_path / "missing"))
    assert r.returncode == 4 and "is not a prior folder" in r.stderr
    assert not (tmp_path / "out2").exists()  # refused before anything was written


def test_prior_train_and_eval_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unicorn_datasets.cli import main
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.seeds.sources import load_caption_seeds

    caps = [s.seed for s in load_caption_seeds("builtin:open_domain")][:80]
    enc = load_encoder("minilm")
    image = l2_normalize(enc.encode_text(caps) @ _rotation(np.random.default_rng(0), 384) + 0.2)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"caption": c, "image_embedding": e.tolist()}) + "\n"
                             for c, e in zip(caps, image)))
    out = tmp_path / "prior"
    assert main(["prior", "train", str(pairs), "--encoder", "minilm", "--out", str(out), "--val-fraction", "0.25"]) == 0
    captured = capsys.readouterr()
    trained = json.loads(captured.out)
    assert trained["family"] == "linear" and trained["eval"]["n"] == 20
    assert trained["comparison"]["winner"] == "linear" and trained["comparison"]["margin"] > 0
    assert "prior train: linear prior beats the mean shift on 20 validation pairs" in captured.err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"]["fingerprint"] == enc.describe()["fingerprint"] and cfg["training_data"]["n_pairs"] == 80
    assert main(["prior", "eval", str(out), str(pairs)]) == 0  # the encoder comes from the prior's config
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 80 and set(ev["methods"]) == {"none", "mean-shift", "c3", "prior"}
    for method in ev["methods"].values():  # every method, both comparisons, all four numbers
        for kind in ("centred", "uncentred"):
            assert set(method[kind]) == {"paired_cosine", "recall@1", "recall@5", "frechet"}
    prior, shift = ev["methods"]["prior"], ev["methods"]["mean-shift"]
    assert prior["centred"]["recall@1"] > shift["centred"]["recall@1"]
    # uncentred: the prior puts the image mean back, the mean shift has none to add
    assert prior["uncentred"]["paired_cosine"] > shift["uncentred"]["paired_cosine"] + 0.1
    assert main(["prior", "train", str(pairs), "--encoder", "minilm", "--out", str(out)]) == 4  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prior", "train", str(pairs), "--encoder", "minilm", "--out", str(tmp_path / "x"),
                 "--hidden", "8"]) == 4
    assert "applies to --family flow only" in capsys.readouterr().err
    assert main(["prior", "train", str(pairs), "--encoder", "minilm", "--out", str(tmp_path / "x"),
                 "--family", "linear,cubic"]) == 4
    assert "--family 'linear,cubic': choose from linear, orthogonal, flow" in capsys.readouterr().err
    assert main(["prior", "train", str(pairs), "--encoder", "minilm", "--out", str(tmp_path / "both"),
                 "--family", "linear,orthogonal", "--val-fraction", "0.25"]) == 0
    both = json.loads(capsys.readouterr().out)["comparison"]
    assert set(both["families"]) == {"linear", "orthogonal"} and both["chosen"] == max(both["families"],
                                                                                        key=both["families"].get)


# -- never worse than the mean shift -------------------------------------------------------------
def _shifted(rng: np.random.Generator, n: int, d: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs where the mean shift is the right map: image = text + a gap vector + noise."""
    text = _text(rng, n, d)
    return text, l2_normalize(text + 0.8 * l2_normalize(rng.standard_normal(d)) + noise * rng.standard_normal((n, d)))


def test_linear_prior_shrinks_toward_the_mean_shift_and_plain_ridge_does_not() -> None:
    rng = np.random.default_rng(0)
    text, image = _shifted(rng, 1400, 64, 0.15)
    train, test = slice(0, 400), slice(400, None)  # few noisy pairs for 64 x 64 numbers
    shrunk = fit_and_evaluate(text[train], image[train], "linear", val_fraction=0.25)
    ridge = fit_and_evaluate(text[train], image[train], "linear", val_fraction=0.25, shrink_to="zero")
    t, real, shifted = _held_out(text[test], image[test], 1000)
    ms = paired_cosine(shifted, real)
    assert paired_cosine(shrunk.sample(t)[:, 0], real) >= ms - 0.005
    assert paired_cosine(ridge.sample(t)[:, 0], real) < ms - 0.05
    assert ridge.meta["comparison"]["worse_than_mean_shift"] and ridge.meta["comparison"]["winner"] == "mean-shift"
    summary = ridge.meta["comparison"]["summary"]  # the one line `prior train` prints
    assert summary.startswith("the mean shift wins on 100 validation pairs") and "--allow-worse-prior" in summary
    assert not shrunk.meta["comparison"]["worse_than_mean_shift"]


def test_orthogonal_prior_recovers_a_rotation_from_few_pairs() -> None:
    rng = np.random.default_rng(2)
    d = 16
    text = _text(rng, 1040, d)
    image = l2_normalize(text @ _rotation(rng, d) + 0.3 + 0.02 * rng.standard_normal((1040, d)))
    prior = fit_and_evaluate(text[:40], image[:40], "orthogonal", val_fraction=0.25)
    w = prior.weight / np.linalg.norm(prior.weight, axis=0)
    np.testing.assert_allclose(w.T @ w, np.eye(d), atol=1e-8)  # orthogonal up to its one scale
    t, real, shifted = _held_out(text[40:], image[40:], 1000)
    assert paired_cosine(prior.sample(t)[:, 0], real) > 0.9 > 0.3 > paired_cosine(shifted, real)


@pytest.fixture()
def worse_prior(tmp_path: Path) -> Path:
    """A plain-ridge prior on few noisy mean-shift pairs: it loses to the mean shift on validation."""
    text, image = _shifted(np.random.default_rng(0), 60, 8, 0.3)
    prior = fit_and_evaluate(text, image, "linear", val_fraction=0.25, shrink_to="zero", alphas=[1e-3])
    assert prior.meta["comparison"]["worse_than_mean_shift"]
    prior.meta["encoder"] = ENC
    return prior.save(tmp_path / "worse")


def test_a_prior_worse_than_the_mean_shift_is_refused_then_warned_when_allowed(
        worse_prior: Path, tmp_path: Path, tiny_llm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unicorn_datasets.stages.transfer import check_against_mean_shift

    r = run_build(_args(tmp_path / "out", tiny_llm, worse_prior))
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert f"the prior {worse_prior} lost to the mean shift on its validation pairs" in r.stderr
    assert "--allow-worse-prior" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    check_against_mean_shift(load_prior(worse_prior), str(worse_prior), allow_worse=True)
    assert "used anyway (--allow-worse-prior)" in capsys.readouterr().err
    old = load_prior(worse_prior)
    old.meta.pop("comparison")  # a prior saved before the comparison was recorded
    check_against_mean_shift(old, "old", allow_worse=False)
    assert "records no comparison with the mean shift" in capsys.readouterr().err
