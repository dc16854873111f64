"""BERT text encoder for referring expressions (DIT-SAM and its text-prompt baselines).

Loads a local Hugging Face BERT folder only (``config.json``, weights, ``vocab.txt`` or
``tokenizer.json``); nothing is downloaded. Without a folder a randomly initialised BERT is built:
``size=tiny`` (tests and the embedded default, with a small character-level WordPiece vocabulary)
or ``size=bert-base`` (bert-base-uncased's architecture without weights, for files that fill every
tensor, e.g. the DIT authors' checkpoints; it needs a ``tokenizer``).
Tokenisation uses the ``tokenizers`` library directly: ``[CLS] … [SEP]``, truncated and padded
to ``max_tokens`` (special tokens included), lower-cased for uncased models.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from torch import nn

from sambench.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from transformers import BertModel

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: Whole words of the tiny vocabulary (everything else falls back to characters).
TINY_WORDS = (
    "the a an of on in at to with and left right top bottom middle front back near far big small "
    "man woman person guy girl boy shirt car dog cat red green blue yellow white black square circle "
    "triangle shape"
).split()
#: bert-base-uncased's architecture (its config.json), built without weights by ``size=bert-base``.
BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
)
SIZES = ("tiny", "bert-base")
DOWNLOAD_HINT = (
    "download bert-base-uncased (config.json, model.safetensors or pytorch_model.bin, vocab.txt) "
    "from the Hugging Face hub on a machine with internet and pass method.text_encoder.path=<folder>"
)


def tiny_vocabulary() -> dict[str, int]:
    """Special tokens, characters (also as ``##`` continuations) and a few whole words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars] + TINY_WORDS
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def build_tokenizer(source: str | Path | None, lowercase: bool = True) -> Tokenizer:
    """A BERT WordPiece tokenizer from a folder (``tokenizer.json`` or ``vocab.txt``), a vocab
    file, or (``None``) the tiny vocabulary."""
    if source is None:
        return BertWordPieceTokenizer(tiny_vocabulary(), lowercase=lowercase)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        path = path / "vocab.txt"
    if not path.is_file():
        raise CheckpointError(f"tokenizer not found: {path} (expected a vocab.txt or a folder with tokenizer.json/vocab.txt); {DOWNLOAD_HINT}")
    try:  # from_file reads the vocabulary; BertWordPieceTokenizer(<path str>) would not
        return BertWordPieceTokenizer.from_file(str(path), lowercase=lowercase)
    except TypeError as exc:  # raised by tokenizers when [CLS]/[SEP] are missing
        raise CheckpointError(f"{path} is not a BERT vocabulary: it has no [CLS]/[SEP] tokens ({exc})") from None


class BertTextEncoder(nn.Module):
    """Referring expressions -> BERT token features.

    Args:
        path: local Hugging Face BERT folder; ``None`` builds the tiny random BERT below.
        tokenizer: a different tokenizer folder or ``vocab.txt`` (default: ``path``).
        layer: hidden state returned: 1 = output of the first transformer layer (official DIT),
            ``num_hidden_layers`` = last layer (the paper's "BERT with 12 layers"), 0 = embeddings.
        trainable: fine-tune the layers that feed ``layer`` (the rest stays frozen: it gets no
            gradient); false freezes BERT entirely.
        max_tokens: sequence length incl. [CLS]/[SEP] (padding/truncation).
        lowercase: lower-case before WordPiece (uncased models).
        size: architecture of the random BERT built without ``path``: ``tiny`` (default) or
            ``bert-base`` (bert-base-uncased-sized; needs ``tokenizer``, e.g. its vocab.txt).
        tiny: BertConfig sizes of the tiny preset (only used without ``path``).
        init_seed: seed of the random initialisation (without ``path``).
        allow_random_init: permit ``path=None`` (a random BERT); otherwise a clear error.
    """

    def __init__(
        self, *, path: str | None = None, tokenizer: str | None = None, layer: int = 1, trainable: bool = True,
        max_tokens: int = 20, lowercase: bool = True, size: str | None = None, tiny: dict | None = None,
        init_seed: int = 0, allow_random_init: bool = False,
    ):
        super().__init__()
        size = size or "tiny"
        if size not in SIZES:
            raise ConfigError(f"unknown method.text_encoder.size '{size}'; valid: {', '.join(SIZES)}")
        if path is None and not allow_random_init:
            raise CheckpointError(f"method.text_encoder.path is not set: {DOWNLOAD_HINT} (allow_random_init=true builds a tiny random BERT, for tests only)")
        if path is None and size == "bert-base" and tokenizer is None:
            raise ConfigError("method.text_encoder.size=bert-base without a path needs method.text_encoder.tokenizer="
                              "<bert-base-uncased vocab.txt or folder> (the tiny vocabulary does not fit a bert-base model)")
        self.bert = self._load(path, size, tiny or {}, init_seed)
        self.tokenizer = build_tokenizer(tokenizer or path, lowercase)
        depth = self.bert.config.num_hidden_layers
        if not 0 <= layer <= depth:
            raise ConfigError(f"method.text_encoder.layer={layer} but the BERT has {depth} layers (valid: 0..{depth})")
        vocab = self.tokenizer.get_vocab_size()
        if vocab > self.bert.config.vocab_size:
            raise CheckpointError(f"tokenizer has {vocab} tokens but the BERT embeds only {self.bert.config.vocab_size}: tokenizer and model do not match")
        self.layer, self.max_tokens, self.dim = layer, max_tokens, self.bert.config.hidden_size
        self.tokenizer.enable_truncation(max_length=max_tokens)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(length=max_tokens, pad_id=pad_id, pad_token="[PAD]")
        self.bert.requires_grad_(False)
        if trainable:  # only what feeds the chosen hidden state receives gradients (DDP-safe)
            self.bert.embeddings.requires_grad_(True)
            for block in self.bert.encoder.layer[:layer]:
                block.requires_grad_(True)

    @staticmethod
    def _load(path: str | None, size: str, tiny: dict, init_seed: int) -> BertModel:
        from transformers import BertConfig, BertModel  # here, not at import: a CLI run without BERT skips ~3 s

        if path is None:
            if size == "bert-base":
                config = BertConfig(**BERT_BASE)
            else:
                config = BertConfig(**{"vocab_size": len(tiny_vocabulary()), "hidden_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, **tiny})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                return BertModel(config)
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"BERT folder not found or incomplete: {folder} (no config.json); {DOWNLOAD_HINT}")
        try:
            return BertModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load BERT weights from {folder}: {exc}; {DOWNLOAD_HINT}") from None

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids B×T (int64) and attention mask B×T (bool, True = real token)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return ids, mask

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features B×T×D from hidden state ``layer`` and the mask B×T (True = real token)."""
        device = self.bert.embeddings.word_embeddings.weight.device
        ids, mask = (t.to(device) for t in self.tokenize(texts))
        out = self.bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return out.hidden_states[self.layer], mask
