"""Train a small GPT-2 style (byte-level BPE) tokenizer offline, for decoders trained from scratch."""

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Tokenizer

EOS = "<|endoftext|>"


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
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    return GPT2Tokenizer(
        vocab=dict(trained["vocab"]), merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS
    )
