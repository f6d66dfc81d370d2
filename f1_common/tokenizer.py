"""SentencePiece tokenisation of instructions (PaliGemma tokenizer.model, or a test model)."""

from __future__ import annotations

import io
import os

import numpy as np
import sentencepiece as spm


def clean_instruction(text: str) -> str:
    """pi0-style cleanup: strip, underscores and newlines to spaces."""
    return text.strip().replace("_", " ").replace("\n", " ")


class Tokenizer:
    """Encodes `bos + clean(text) + "\\n"`, right-padded with 0 to `max_len` with a mask.

    A prompt longer than `max_len` loses tokens from the end of the instruction, never the
    closing "\\n" (the model learned that the prompt ends there). Picklable: the SentencePiece
    processor is loaded lazily per process.
    """

    def __init__(self, model_path: str, max_len: int = 48):
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist")
        self.model_path = model_path
        self.max_len = max_len
        self._sp = None

    def __getstate__(self):
        return {**self.__dict__, "_sp": None}

    @property
    def sp(self):
        if self._sp is None:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        return self._sp

    def _ids(self, text: str) -> tuple[list[int], list[int]]:
        return self.sp.encode(clean_instruction(text), add_bos=True), self.sp.encode("\n")

    def token_count(self, text: str) -> int:
        """Length of the untruncated prompt `bos + clean(text) + "\\n"` in tokens."""
        ids, end = self._ids(text)
        return len(ids) + len(end)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> (tokens int32 [max_len], mask bool [max_len]); a longer prompt is cut inside
        the instruction so that it still ends with "\\n"."""
        ids, end = self._ids(text)
        if len(end) >= self.max_len:
            raise ValueError(f"max_len {self.max_len} leaves no room for an instruction")
        ids = ids[: self.max_len - len(end)] + end
        tokens = np.zeros((self.max_len,), np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros((self.max_len,), bool)
        mask[: len(ids)] = True
        return tokens, mask


def train_tokenizer(texts: list[str], path: str, vocab_size: int = 128) -> str:
    """Trains a small BPE SentencePiece model on `texts` (the built-in task and tests use it).

    Ids follow PaliGemma's convention (pad 0, eos 1, bos 2, unk 3) so the same code serves both.
    """
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([clean_instruction(t) for t in texts] + ["\n"]),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
        user_defined_symbols=["\n"],
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path
