"""Synthetic COCO-like captions and word-level tokenizers for the data and training benchmarks.

Speed and memory depend on how many tokens a caption has, not on which words it uses. COCO captions have about
10.5 words (mode 9-10, sd about 2.5) and a thin tail to about 50 words; real GPT-2 and CLIP tokenizers give about
one token per such word. The tiny test tokenizers (vocabulary 300) split a word into about 3.4 tokens, so the
benchmarks build their own byte-level BPE (decoder) and CLIP-style BPE (CLIP) with a whole-word token for each
word of the synthetic vocabulary: a synthetic caption of n words is then n decoder tokens (+ eos) and n + 2 CLIP
tokens, as a COCO caption is with the real tokenizers.
"""

import numpy as np
from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, GPT2Tokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor

WORDS = (
    "a an the two three of on in with near at by and next to some their its his her while"
    " man woman person people child children boy girl dog cat horse bird cow sheep elephant giraffe"
    " bus train car truck bike motorcycle boat plane kite surfboard skateboard umbrella pizza sandwich"
    " plate table bowl cake banana broccoli kitchen room street field beach ocean water snow grass tree"
    " sitting standing walking riding holding eating playing looking flying parked running laying"
    " red white black blue green large small young old wooden top side front"
).split()
# Long enough for the tail: CLIP's context is 77 tokens, the decoder's budget 64 (data_capdec's default).
MAX_WORDS = 50
CLIP_CONTEXT = 77


def caption_word_counts(num_captions: int, seed: int = 0) -> np.ndarray:
    """Words per caption, COCO-like: a log-normal body around 10.5 words (5-30) and 0.5% long tail (20-50).

    The longest caption of a corpus of a few thousand is then about 45-50 words, as in COCO, whose maximum is
    what the original code padded every caption to.
    """
    rng = np.random.default_rng(seed)
    body = np.clip(np.rint(rng.lognormal(np.log(10.2), 0.22, num_captions)), 5, 30)
    tail = rng.integers(20, MAX_WORDS + 1, num_captions)
    counts = np.where(rng.random(num_captions) < 0.005, tail, body).astype(np.int64)
    if num_captions >= 1000:
        counts[rng.integers(num_captions)] = MAX_WORDS  # every sizeable corpus reaches the tail's end
    return counts


def synthetic_captions(num_captions: int, seed: int = 0) -> list[str]:
    """`num_captions` deterministic captions of `caption_word_counts(...)` words: "a" and words drawn from
    `WORDS` (random order: speed and memory depend on the lengths only)."""
    rng = np.random.default_rng(seed + 1)
    counts = caption_word_counts(num_captions, seed)
    word_ids = rng.integers(len(WORDS), size=int(counts.sum()))
    captions, start = [], 0
    for count in counts:
        captions.append(" ".join(["a"] + [WORDS[i] for i in word_ids[start : start + count - 1]]))
        start += count
    return captions


def _chain_bpe(words: list[str], alphabet: list[str], specials: list[str], from_right: bool):
    """Vocabulary and merges under which each word of `words` is one BPE token, built without training (the
    tokenizers trainer breaks ties in hash order, so it gives other ids in every process, and the datasets cache
    is keyed by the tokenizers).

    Each word is built by a chain of merges that all carry its marker: from the left starting at its "Ġ" (the
    byte-level space), or from the right starting at its "</w>" end. At every step the word's next chain merge
    is then the only merge that applies, whatever the ranks, so no word can be split by another's merges.
    """
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    merges = []
    for word in words:
        pieces = list(word)
        while len(pieces) > 1:
            left, right = (pieces[-2], pieces[-1]) if from_right else (pieces[0], pieces[1])
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
            pieces = pieces[:-2] + [merged] if from_right else [merged] + pieces[2:]
    return vocab, merges


def word_level_processor() -> CapDecProcessor:
    """A processor whose decoder and CLIP tokenizers give one token per word of `WORDS` (ids < 1000, so they
    fit the real GPT-2 and CLIP vocabularies); CLIP's context is 77 tokens, as OpenAI CLIP's. Deterministic.

    Decoder side: captions start with "a" (as most COCO captions), every later word has a leading space, so
    only the spaced forms ("Ġdog") need whole-word tokens.
    """
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = _chain_bpe(
        ["Ġ" + word for word in WORDS], byte_alphabet, ["<|endoftext|>"], from_right=False
    )
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    # CLIP marks the last character of a word: "dog" -> d, o, g</w>.
    letters = sorted({char for word in WORDS for char in word})
    clip_words = [list(word[:-1]) + [word[-1] + "</w>"] for word in WORDS]
    clip_vocab, clip_merges = _chain_bpe(
        clip_words,
        letters + [char + "</w>" for char in letters],
        ["<|startoftext|>", "<|endoftext|>"],
        from_right=True,
    )
    clip_tokenizer = CLIPTokenizer(vocab=clip_vocab, merges=clip_merges)
    clip_tokenizer.model_max_length = CLIP_CONTEXT
    processor = CapDecProcessor(
        image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer, clip_tokenizer=clip_tokenizer
    )
    # Guards edits to WORDS: every word (after the caption's leading "a") must be one token on both sides.
    phrases = [f"a {word}" for word in WORDS]
    decoder_lengths = {len(ids) for ids in tokenizer(phrases)["input_ids"]}
    clip_lengths = {len(ids) for ids in clip_tokenizer(phrases)["input_ids"]}
    if decoder_lengths != {2} or clip_lengths != {4}:
        raise AssertionError(f"a word of WORDS is split: {decoder_lengths=}, {clip_lengths=}")
    return processor


def match_special_tokens(model: CapDecForConditionalGeneration, processor: CapDecProcessor) -> None:
    """Point the model's CLIP text pooling and decoder specials at the processor's token ids.

    CLIP pools the text embedding at the first eos token, found by id; with `CLIPConfig()`'s default id (49407)
    absent from our tokenizer's output every caption would pool at position 0 and embed alike.
    """
    clip_tokenizer = processor.clip_tokenizer
    text_config = model.clip.config.text_config
    text_config.eos_token_id = clip_tokenizer.eos_token_id
    text_config.bos_token_id = clip_tokenizer.bos_token_id
    text_config.pad_token_id = clip_tokenizer.pad_token_id
    model.clip.text_model.eos_token_id = clip_tokenizer.eos_token_id  # read once, at construction
    eos = processor.tokenizer.eos_token_id
    model.decoder.config.eos_token_id = model.decoder.config.bos_token_id = eos
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
