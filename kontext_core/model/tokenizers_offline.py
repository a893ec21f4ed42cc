"""Tokenizers built offline with the `tokenizers` library.

No tokenizer vocabulary can be downloaded here, so the tiny model learns its own: a byte-level BPE
with the `</w>` end-of-word suffix that CLIP's tokenizer class expects, and a Unigram model shaped
like T5's sentencepiece vocabulary (<pad>=0, </s>=1, <unk>=2). Both are learnt in plain Python
with ordered tie-breaks, so the saved files are the same bytes in every process.
"""

from __future__ import annotations

import math
from collections import Counter

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5TokenizerFast

# Enough English to give the BPE merges and the Unigram pieces real words to learn; the
# captions of the sample data use this vocabulary.
_CORPUS_WORDS = """
a an the of and or with without to from in on at by for into onto over under near far
make turn change convert replace remove add keep put paint colour color recolor invert
red green blue yellow orange purple pink black white grey gray brown cyan magenta gold silver
light dark bright dim warm cool night day morning evening sunset sunrise winter summer spring
autumn snow rain fog storm cloud sky sea water river lake forest tree flower grass stone
circle square triangle star stripe stripes dot dots grid wave waves gradient texture pattern
shape shapes object objects subject scene background foreground image photo picture style
sharp sharpen blur blurry deblur noise noisy clean restore enhance detail details clarity
increase decrease quality jpeg artifact artifacts compression remove fix upscale resolution
small large big tiny huge round square soft hard smooth rough shiny matte glass metal wood
cat dog bird car house street city room table chair lamp cup bottle book person face hand
left right top bottom middle centre center side edge corner frame border panel product
""".split()


def _corpus() -> list[str]:
    words = _CORPUS_WORDS
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    lines += [f"make the {a} {b}" for a in words[:60:3] for b in words[60:120:5]]
    return lines


def _bpe_merges(words: list[str], budget: int) -> list[tuple[str, str]]:
    """Greedy BPE merges with ties broken by the pair itself.

    The `tokenizers` BPE trainer breaks ties by hash-map order, which differs between processes;
    the tiny model must tokenize identically everywhere, so the merges are learnt here.
    """
    counts = Counter(words)
    symbols = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges: list[tuple[str, str]] = []
    while len(merges) < budget:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in symbols.items():
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = merged
    return merges


def build_clip_tokenizer(vocab_size: int = 1000) -> CLIPTokenizer:
    """A CLIP-style BPE (byte alphabet, `</w>` word ends) learnt deterministically from the corpus."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    base = sorted(alphabet) + sorted(ch + "</w>" for ch in alphabet)
    special = ["<|startoftext|>", "<|endoftext|>"]
    words = [w.lower() for line in _corpus() for w in line.split()]
    merges = _bpe_merges(words, vocab_size - len(base) - len(special))
    tokens = base + ["".join(m) for m in merges] + special
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    # model_max_length must be set: without it the pipeline pads CLIP input to ~1e30 tokens.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _unigram_pieces(words: list[str], size: int) -> list[tuple[str, float]]:
    """Unigram pieces with log-frequency scores, chosen and scored in plain Python.

    The `tokenizers` Unigram trainer sums its EM statistics in hash-map order, so both the pieces
    it keeps and the last digits of their scores change from process to process (and with them the
    bytes of `tokenizer.json` and the hash of the tiny model). Here every piece is a substring of a
    corpus word (`▁` marks a word start, as in sentencepiece), every choice is ordered by
    (count, piece), and the score is log(count / total): the same floats in any process.
    """
    counts: Counter[str] = Counter()
    for word in words:
        marked = "▁" + word
        for start in range(len(marked)):
            for end in range(start + 1, min(len(marked), start + 12) + 1):
                counts[marked[start:end]] += 1
    # Every single character stays, so any corpus word can be spelt; longer pieces fill the rest by
    # how much text they cover.
    chars = sorted(piece for piece in counts if len(piece) == 1)
    longer = sorted(
        (piece for piece in counts if len(piece) > 1 and counts[piece] >= 2),
        key=lambda piece: (-counts[piece] * len(piece), piece),
    )
    chosen = sorted(chars + longer[: max(0, size - len(chars))], key=lambda piece: (-counts[piece], piece))
    total = sum(counts[piece] for piece in chosen)
    return [(piece, math.log(counts[piece] / total)) for piece in chosen]


def build_t5_tokenizer(vocab_size: int = 1000) -> T5TokenizerFast:
    """A T5-style Unigram tokenizer (<pad>=0, </s>=1, <unk>=2) built deterministically from the corpus."""
    special = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = [w.lower() for line in _corpus() for w in line.split()]
    vocab = special + _unigram_pieces(words, vocab_size - len(special))
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
