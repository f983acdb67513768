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


def make_tokenizer(folder: Path):
    """A byte-level BPE trained on a few hundred English words: can spell any text, decodes to words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image_soft_token>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 20 + [" ".join(PUNCT)] * 5 + ['{"QA Pairs": [{"Question": "?", "Answer": "A"}]}'] * 5
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", additional_special_tokens=["<image_soft_token>"])
    fast.padding_side = "left"
    fast.save_pretrained(folder)
    return fast


def make_tiny_llm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a word-level tokenizer: emits English words, fast on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # make EOS unlikely so rows run to a useful length
        model.lm_head.weight[tok.eos_token_id] *= 0.0
        model.lm_head.bias = None
    model.save_pretrained(folder)
    return folder
