"""Text (and image) encoders mapping into one shared, L2-normalised embedding space.

Every encoder returns float32 numpy arrays of shape [N, dim], each row L2-normalised, in the
order of its input. Families:

- ``clip`` / ``siglip`` / ``siglip2``: a transformers dual encoder folder (or Hub id);
  ``get_text_features`` / ``get_image_features``; tokenizer and image processor from the same folder.
- ``sentence-transformers``: a folder with ``modules.json`` or ``sentence_bert_config.json``; text only.
  Transformer + Pooling (+ Normalize) modules are run with plain transformers (backend
  ``transformers``); other module stacks fall back to the ``sentence_transformers`` package.
- ``minilm``: alias of the offline all-MiniLM-L6-v2 package (a sentence-transformers folder, 384-d).
- ``llm2clip``: the Unicorn paper's encoder (needs custom model code, ``trust_remote_code=True``).

Spec forms: a local folder, a Hub id (``org/name`` or ``org/name@revision``, online only), ``minilm``,
``llm2clip`` or ``llm2clip:CLIP_FOLDER_OR_ID[,LLM_FOLDER_OR_ID]``.
"""

# Public API, plus the names the single-module version defined, so existing imports keep working.
from unicorn_datasets.encoders.base import Encoder, EncoderError, LoadOptions  # noqa: F401
from unicorn_datasets.encoders.dual import _DualEncoder  # noqa: F401
from unicorn_datasets.encoders.llm2clip import (  # noqa: F401
    LLM2CLIP_DEFAULT_CLIP,
    LLM2CLIP_DEFAULT_IMAGE_PROCESSOR,
    LLM2CLIP_DEFAULT_LLM,
    LLM2CLIP_MAX_LENGTH,
    _LLM2CLIPEncoder,
)
from unicorn_datasets.encoders.loading import load_encoder
from unicorn_datasets.encoders.sentence import _NeedsSTPackage, _SentenceTransformerEncoder, _STPackageEncoder  # noqa: F401
from unicorn_datasets.encoders.sources import _config_sha256, _fingerprint, _resolve, _revision_from_path  # noqa: F401

__all__ = [
    "Encoder",
    "EncoderError",
    "load_encoder",
    "LLM2CLIP_DEFAULT_CLIP",
    "LLM2CLIP_DEFAULT_LLM",
]
