"""The BERT text encoder: tokenisation, local folders only, layer choice, clear errors."""

from __future__ import annotations

import pytest
import torch

from sambench.backbones.text import BertTextEncoder, tiny_vocabulary
from sambench.errors import CheckpointError, ConfigError


def test_tokens_are_cls_sentence_sep_padded_to_twenty():
    encoder = BertTextEncoder(allow_random_init=True)
    ids, mask = encoder.tokenize(["The man on the LEFT", " ".join(["word"] * 40)])
    tokens = [encoder.tokenizer.id_to_token(int(i)) for i in ids[0][: int(mask[0].sum())]]
    assert tokens == ["[CLS]", "the", "man", "on", "the", "left", "[SEP]"]
    assert ids.shape == (2, 20) and mask[1].all() and encoder.tokenizer.id_to_token(int(ids[1, -1])) == "[SEP]"
    assert not mask[0, 7:].any()


def test_layer_selects_the_hidden_state():
    first = BertTextEncoder(allow_random_init=True, layer=1)
    last = BertTextEncoder(allow_random_init=True, layer=2)
    f1, _ = first(["red square"])
    f2, _ = last(["red square"])
    assert f1.shape == (1, 20, 32) and not torch.allclose(f1, f2)
    with pytest.raises(ConfigError, match="valid: 0..2"):
        BertTextEncoder(allow_random_init=True, layer=3)


def test_random_bert_needs_explicit_permission():
    with pytest.raises(CheckpointError, match="bert-base-uncased"):
        BertTextEncoder()


def test_local_folder_and_vocab_file_load_real_tokens(tmp_path):
    """A saved Hugging Face folder loads offline and gives the same features; a vocab.txt file
    gives real word pieces, not [UNK] (transformers 5 BertTokenizer(vocab_file=) ignores the file)."""
    tiny = BertTextEncoder(allow_random_init=True).eval()  # no dropout
    folder = tmp_path / "bert"
    tiny.bert.save_pretrained(folder)
    vocab = sorted(tiny_vocabulary(), key=tiny_vocabulary().get)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    loaded = BertTextEncoder(path=str(folder)).eval()
    torch.testing.assert_close(loaded(["green circle"])[0], tiny(["green circle"])[0])
    only_vocab = BertTextEncoder(allow_random_init=True, tokenizer=str(folder / "vocab.txt"))
    ids, mask = only_vocab.tokenize(["green circle"])
    words = [only_vocab.tokenizer.id_to_token(int(i)) for i in ids[0][: int(mask[0].sum())]]
    assert words == ["[CLS]", "green", "circle", "[SEP]"]


def test_missing_or_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        BertTextEncoder(path=str(tmp_path / "nowhere"))
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")
    with pytest.raises(CheckpointError, match="no \\[CLS\\]"):
        BertTextEncoder(allow_random_init=True, tokenizer=str(tmp_path / "vocab.txt"))
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        BertTextEncoder(allow_random_init=True, tokenizer=str(tmp_path / "missing.txt"))
