"""LLM2CLIP as users have it: two checkpoints (CLIP half with custom code + LLM half), loaded as
`llm2clip:CLIP_DIR,LLM_DIR`; tiny random-weight models of both halves, built from configs offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_clip, make_tiny_llm

from unicorn_datasets.encoders import EncoderError, load_encoder

# The CLIP half's remote code, reduced to what the encoder calls: LLM2CLIP maps the LLM's pooled hidden
# state through an adapter into the CLIP text projection (1280-d); images go through the CLIP ViT.
MODELING = '''
import torch
from transformers import CLIPModel


class LLM2CLIPModel(CLIPModel):
    def __init__(self, config):
        super().__init__(config)
        self.text_adapter = torch.nn.Linear(config.llm_hidden_size, config.text_config.hidden_size)

    def get_text_features(self, inputs, **kwargs):
        return self.text_projection(self.text_adapter(inputs))
'''


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from transformers import CLIPConfig

    root = tmp_path_factory.mktemp("llm2clip")
    llm = make_tiny_llm(root / "LLM2CLIP-Llama-tiny")
    clip = make_tiny_clip(root / "LLM2CLIP-Openai-tiny", projection_dim=1280)
    (clip / "modeling_llm2clip.py").write_text(MODELING)
    spec = importlib.util.spec_from_file_location("modeling_llm2clip", clip / "modeling_llm2clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = CLIPConfig.from_pretrained(clip)
    cfg.llm_hidden_size = json.loads((llm / "config.json").read_text())["hidden_size"]
    cfg.auto_map = {"AutoModel": "modeling_llm2clip.LLM2CLIPModel"}
    torch.manual_seed(0)
    module.LLM2CLIPModel(cfg).save_pretrained(clip)  # architectures: ["LLM2CLIPModel"], as the real checkpoint
    return clip, llm


def test_both_halves_give_1280d_mean_pooled_normalised_text_and_image_embeddings(halves: tuple[Path, Path]) -> None:
    from PIL import Image

    clip, llm = halves
    enc = load_encoder(f"llm2clip:{clip},{llm}", trust_remote_code=True)
    assert enc.dim == 1280 and enc.describe()["family"] == "llm2clip" and enc.describe()["pooling"] == "mean"
    texts = ["a red kite", "two dogs play in the snow near a wooden fence at dusk"]
    out = enc.encode_text(texts, batch_size=2)
    assert out.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    alone = enc.encode_text(texts[:1], batch_size=1)  # left padding in a batch must not change the mean pooling
    np.testing.assert_allclose(alone[0], out[0], atol=1e-4)
    assert not np.allclose(out[0], out[1])
    images = enc.encode_images([Image.new("RGB", (40, 40), c) for c in ("red", "blue")])
    assert images.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-4)


def test_one_half_alone_is_refused_naming_the_missing_half_and_the_form(halves: tuple[Path, Path]) -> None:
    clip, llm = halves
    with pytest.raises(EncoderError, match=r"the CLIP half of LLM2CLIP.*the LLM half is missing.*llm2clip:"):
        load_encoder(clip, trust_remote_code=True)
    with pytest.raises(EncoderError, match=r"an LLM \(model_type 'llama'\).*the CLIP half is missing.*"
                                           r"llm2clip:CLIP_DIR,"):
        load_encoder(llm, trust_remote_code=True)
