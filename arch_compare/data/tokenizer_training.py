"""Training small tokenizers in each family's layout, for worlds too small for a released one.

The offline demo trains its three vocabularies here (`arch_compare_tasks.demo_world`): a
byte-level BPE in GPT-2's layout and SentencePiece models in LLaMA's and T5's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence


# SentencePiece reads sentences, not documents: texts are split at newlines for training, and the
# newline is a piece of its own so markdown lists survive encoding (T5's released vocabulary cannot
# spell a newline; this one can, so list style is measurable for every architecture here).
SENTENCEPIECE_LAYOUTS = {  # family -> special ids, as each family's released vocabulary has them
    "t5": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1},
    "llama": {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
}


def train_sentencepiece(texts: Sequence[str], path, layout: str, vocab_size: int) -> None:
    """BPE pieces (this corpus is too small for a unigram model of this size), no byte fallback
    (the world's text is ASCII, and 256 byte pieces would leave little room for words)."""
    import sentencepiece
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    with tempfile.TemporaryDirectory() as scratch, open(path, "wb") as handle:
        # One harmless rule (no-break space -> space) instead of the identity normaliser, whose
        # empty character map makes every load of the model log a line.
        rules = Path(scratch) / "rules.tsv"
        rules.write_text("A0\t20\n")
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=handle, vocab_size=vocab_size,
            model_type="bpe", hard_vocab_limit=False, normalization_rule_tsv=str(rules),
            remove_extra_whitespaces=False, user_defined_symbols=["\n"],
            character_coverage=1.0, num_threads=1, minloglevel=2,
            **SENTENCEPIECE_LAYOUTS[layout])


def train_byte_level_bpe(texts: Sequence[str], path, vocab_size: int,
                         eos_token: str = "<|endoftext|>") -> None:
    """GPT-2's layout: the 256 byte symbols first, then merges, EOS as the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([eos_token])
    tokenizer.save(str(path))
