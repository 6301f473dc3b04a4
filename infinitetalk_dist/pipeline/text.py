"""Prompt -> umt5 embeddings, computed once per distinct prompt and cached.

Real weights use the umt5-xxl tokenizer shipped in the Wan folder (``google/umt5-xxl``),
called as the reference does (ftfy + HTML-unescape + whitespace clean, pad/truncate to
``text_len``, ``</s>`` appended). The tiny preset has no tokenizer files, so it uses a
deterministic UTF-8 byte tokenizer over its small vocabulary.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from infinitetalk_dist.models.t5 import UMT5Encoder

from .encoders import placed

# Wan's default negative prompt (wan/configs/shared_config.py sample_neg_prompt).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def clean_prompt(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class ByteTokenizer:
    """UTF-8 bytes -> ids in [2, vocab) with ``</s>`` = 1 and padding 0 (tiny preset only)."""

    def __init__(self, vocab_size: int, text_len: int):
        self.vocab_size, self.text_len = vocab_size, text_len

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.text_len, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [2 + b % (self.vocab_size - 2) for b in text.encode()][: self.text_len - 1] + [1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, (ids > 0).long()


class HFTokenizer:
    """The umt5 tokenizer folder, called like the reference's HuggingfaceTokenizer."""

    def __init__(self, folder: str | Path, text_len: int):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.text_len = text_len

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tok([clean_prompt(t) for t in texts], return_tensors="pt", padding="max_length",
                       truncation=True, max_length=self.text_len, add_special_tokens=True)
        return out.input_ids, out.attention_mask


class PromptEncoder:
    """Encodes prompts with the umt5 encoder; each distinct prompt is encoded once, its
    embedding kept on ``device`` (the encoder placed by ``mode``: :mod:`.encoders`)."""

    def __init__(self, encoder: UMT5Encoder, tokenizer, *, device: str | torch.device | None = None,
                 mode: str = "gpu"):
        self.encoder, self.tokenizer, self.mode = encoder, tokenizer, mode
        self.device = torch.device(device) if device is not None else next(encoder.parameters()).device
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        """``[tokens, dim]`` embedding of ``prompt`` (trimmed to its true length)."""
        if prompt not in self._cache:
            ids, mask = self.tokenizer([prompt])
            with placed(self.encoder, self.device, self.mode) as run:
                self._cache[prompt] = self.encoder.encode(ids.to(run), mask.to(run))[0].to(self.device)
        return self._cache[prompt]
