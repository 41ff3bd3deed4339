"""BERT encoder for sequence classification, binarized as in BiBERT / BiT (and BiBench).

`bert_tiny`: 4 layers, hidden 256, 4 heads, intermediate 1024, 128 token ids per sample;
`bert_tiny6l`: the same layers, 6 deep (BiBench binarizes BERTs of several depths, and
deeper ones lose more).
The input is token ids only: token types are all zero and every token attends to every
other (no padding mask), so the exported graph has a single int64 input.

Attention is written out with nn.Linear projections and matmul + softmax (no
nn.MultiheadAttention, no F.scaled_dot_product_attention) so the binarizer can find and
replace each projection, and the exporter sees standard ops.

Binarization contract: only the classifier stays full precision; every other Linear (q, k,
v, attention output, both FFN layers, pooler) is binarized. Embeddings are nn.Embedding and
are never replaced. No activation swap: GELU and tanh outputs take both signs.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers", NAACL 2019.
Qin et al., "BiBERT: Accurate Fully Binarized BERT", ICLR 2022.
Liu et al., "BiT: Robustly Binarized Multi-distilled Transformer", NeurIPS 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict

import torch
from torch import nn

from .registry import register_model


class BertEmbeddings(nn.Module):
    position_ids: torch.Tensor  # buffer

    def __init__(self, vocab_size: int, hidden: int, max_positions: int, type_vocab: int, dropout: float):
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.token_type = nn.Embedding(type_vocab, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("position_ids", torch.arange(max_positions), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position(self.position_ids[: ids.shape[1]])
        types = self.token_type(torch.zeros_like(ids))  # single-segment inputs
        return self.dropout(self.norm(self.word(ids) + pos + types))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over all tokens (no mask)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, heads, T, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).flatten(2)
        return self.out(context)

    def attention_flops(self, seq_len: int) -> int:
        """Multiply-accumulates per sample of QK^T and AV, which hold no weight layer and
        so are invisible to per-layer counting: 2 * T * T * hidden."""
        return 2 * seq_len * seq_len * self.hidden


class BertLayer(nn.Module):
    """Post-norm transformer layer: attention and FFN, each with residual + LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, dropout)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x)))
        ffn = self.output(self.act(self.intermediate(x)))
        return self.output_norm(x + self.dropout(ffn))


class BertClassifier(nn.Module):
    def __init__(
        self,
        num_classes: int = 2,
        vocab_size: int = 30522,
        hidden: int = 256,
        num_layers: int = 4,
        heads: int = 4,
        intermediate: int = 1024,
        max_positions: int = 512,
        type_vocab: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, hidden, max_positions, type_vocab, dropout)
        self.layers = nn.Sequential(
            *(BertLayer(hidden, heads, intermediate, dropout) for _ in range(num_layers))
        )
        self.pooler = nn.Linear(hidden, hidden)
        self.pooler_act = nn.Tanh()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embeddings(ids))
        pooled = self.pooler_act(self.pooler(x[:, 0]))  # the [CLS] token
        return self.classifier(self.dropout(pooled))

    def full_precision_layers(self) -> list[str]:
        return ["classifier"]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        """None: GELU and tanh can be negative, so sign() of them is informative."""
        return {}


class _ModelFacts(TypedDict):
    """The `register_model` keyword arguments the BERT variants share."""

    family: str
    task: str
    input_shape: tuple[int, ...]
    num_classes: int
    input_dtype: str
    vocab_size: int


# 128 token ids of BERT's uncased vocabulary, two classes
TOKEN_CLASSIFIER: _ModelFacts = dict(
    family="transformer",
    task="text_classification",
    input_shape=(128,),
    num_classes=2,
    input_dtype="int64",
    vocab_size=30522,
)


@register_model(**TOKEN_CLASSIFIER)
def bert_tiny(num_classes: int = 2) -> BertClassifier:
    """4 layers, hidden 256, 4 heads, intermediate 1024, BERT's uncased vocabulary."""
    return BertClassifier(num_classes)


@register_model(**TOKEN_CLASSIFIER)
def bert_tiny6l(num_classes: int = 2) -> BertClassifier:
    """bert_tiny's layers, 6 deep."""
    return BertClassifier(num_classes, num_layers=6)
