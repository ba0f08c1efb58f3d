"""Word-level text tokenizers trained with the `tokenizers` library, saved in Hugging Face format.

ShapesWorld's language is a small closed vocabulary, so a word-level tokenizer is exact and tiny;
at real scale the encoder's or the LLM's own tokenizer is used instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>")


def build_word_tokenizer(
    texts: Iterable[str], extra_tokens: Sequence[str] = (), max_vocab: int = 4096
):
    """A `PreTrainedTokenizerFast` over the words and punctuation of `texts` (lower-cased).

    Ids: 0 <pad>, 1 </s>, 2 <unk>, 3 <s>, then `extra_tokens`, then the words by frequency.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab, special_tokens=[*SPECIAL_TOKENS, *extra_tokens]
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )
