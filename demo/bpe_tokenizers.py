"""Small byte-level BPE tokenizers trained offline: GPT-2 style for decoders trained from scratch, CLIP style for
the tiny CLIP. The demo trains both on the shapes world; the tests train both on a few captions."""

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer, GPT2Tokenizer

EOS = "<|endoftext|>"
CLIP_BOS = "<|startoftext|>"


def _trained_bpe(bpe: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a trained `tokenizers` BPE, in the form the slow tokenizers take."""
    trained = json.loads(bpe.to_str())["model"]
    # Older `tokenizers` write a merge as "a b", newer ones as ["a", "b"].
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in trained["merges"]]
    return dict(trained["vocab"]), merges


def train_gpt2_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> GPT2Tokenizer:
    """A byte-level BPE trained on `texts`, wrapped as a `GPT2Tokenizer` (eos = bos = unk = `<|endoftext|>`).

    Byte-level means any text encodes, even characters the corpus never had.

    Example:
        >>> tokenizer = train_gpt2_tokenizer(["a small red circle on the left"] * 4, vocab_size=300)
        >>> tokenizer.decode(tokenizer("a red circle")["input_ids"])
        'a red circle'
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    vocab, merges = _trained_bpe(bpe)
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS)


def train_clip_tokenizer(
    captions: Iterable[str], vocab_size: int = 1000, model_max_length: int = 32
) -> CLIPTokenizer:
    """Trains a CLIP-style byte-level BPE tokenizer on `captions` and wraps it as a `CLIPTokenizer`.

    The BPE is trained behind the very normaliser and pre-tokeniser that `CLIPTokenizer` builds, with
    CLIP's `</w>` end-of-word suffix, so the learnt merges mean the same thing once wrapped. The
    vocabulary holds all 256 byte symbols with and without `</w>`: an unknown symbol would become
    `<|endoftext|>`, and CLIP's text model pools at the first `<|endoftext|>`. Training stops early
    once every word of the corpus is a single token.

    Example:
        >>> tokenizer = train_clip_tokenizer(["a small red circle"] * 3)
        >>> tokenizer.tokenize("a small red circle")
        ['a</w>', 'small</w>', 'red</w>', 'circle</w>']
    """
    reference = CLIPTokenizer()
    bpe = Tokenizer(models.BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = reference.backend_tokenizer.normalizer
    bpe.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[CLIP_BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer)
    _, merges = _trained_bpe(bpe)
    # The trainer numbers the alphabet in hash order, which changes from run to run; numbering the
    # tokens ourselves (specials, bytes, bytes ending a word, then each merge's result) makes the
    # same captions give the same ids, hence the same checkpoint.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [
        CLIP_BOS,
        EOS,
        *alphabet,
        *(symbol + "</w>" for symbol in alphabet),
        *(a + b for a, b in merges),
    ]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
