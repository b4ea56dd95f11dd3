"""A word-level tokenizer built locally from captions (the offline default diffusion model's).

One token per lower-cased, white-space separated word, plus CLIP's start/end tokens (the end
token also pads) and ``<unk>``. Built with ``tokenizers`` and wrapped as a transformers fast
tokenizer, so it is saved and loaded like any other (``tokenizer/`` of a pipeline folder, read back
by ``AutoTokenizer.from_pretrained``). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
UNK = "<unk>"
SPECIAL_TOKENS = (BOS, EOS, UNK)


def caption_words(captions: Iterable[str]) -> list[str]:
    """The distinct lower-cased words of ``captions``, sorted (a stable vocabulary)."""
    return sorted({w for c in captions for w in c.lower().split()})


def build_word_tokenizer(captions: Iterable[str], max_length: int = 16):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the special tokens then :func:`caption_words`.

    ``max_length``: the padded prompt length (``model_max_length``); the text encoder's position
    table must be at least this long.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = caption_words(captions)
    if not words:
        raise ValueError("no words to build a tokenizer from: the captions are empty")
    clash = sorted(set(words) & set(SPECIAL_TOKENS))
    if clash:
        raise ValueError(f"caption words {clash} clash with the tokenizer's special tokens")
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS,
                                   model_max_length=max_length)  # fmt: skip


__all__ = ["BOS", "EOS", "UNK", "build_word_tokenizer", "caption_words"]
