"""A decoder-only causal byte-level language model: the Transformer LMs of the batch-size
papers (McCandlish et al. 2018, Shallue et al. 2018), with GPT-2's pre-norm blocks
(Radford et al. 2019).

Tokens [batch, L] (any dtype holding integers: float32 zeros at init, uint8 bytes,
int32) are embedded ("embed"), given a learned position ("pos_embed", [seq_len,
width]), passed through `depth` blocks of x + attn(LN(x)), x + mlp(LN(x)), and a final
LayerNorm ("ln_f"); the logits [batch, L, vocab_size] are float32, the embedding's
transpose (tied) or a Dense "logits" (untied).

dtype is the compute dtype of every matmul; parameters stay float32, and so does the
residual stream between blocks (each sublayer's output is added to it in float32), the
LayerNorm statistics and the attention softmax: a bfloat16 run rounds what the matmuls
read, not what accumulates over depth.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

# GPT-2's initialization: N(0, 0.02) for every kernel and both embeddings. It is width-
# independent, unlike lecun normal, which for the tied [vocab, width] embedding would
# draw by fan-in of the wrong axis; with it the initial logits are small at any width
# (std about 0.02 * sqrt(width) after ln_f), so the first loss is close to log(vocab).
DEFAULT_INIT = nn.initializers.normal(0.02)


class TokenEmbedding(nn.Module):
  """The token table ("embedding" [vocab, width]): a float32 lookup, and `attend` for
  tied output logits in the compute dtype. Its own module so a layer table sees both."""

  vocab_size: int
  width: int
  embedding_init: Callable[..., Any] = DEFAULT_INIT
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", self.embedding_init,
                                (self.vocab_size, self.width), jnp.float32)

  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    # The float32 table itself (a lookup in dtype would round it first).
    return jnp.take(self.embedding, tokens, axis=0)

  def attend(self, h: jnp.ndarray) -> jnp.ndarray:
    return jnp.dot(h.astype(self.dtype), self.embedding.T.astype(self.dtype))


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention where position t sees positions <= t only.

  Written out (not nn.MultiHeadDotProductAttention) so the layers are one "qkv" Dense
  and one "out" Dense, and the softmax is float32 whatever the compute dtype.
  """

  width: int
  heads: int
  kernel_init: Callable[..., Any] = DEFAULT_INIT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    assert self.width % self.heads == 0, f"heads={self.heads} must divide width={self.width}"
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, kernel_init=self.kernel_init,
                   name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [batch, L, heads, head_dim]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(
        jnp.float32(head_dim))
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    probs = nn.softmax(scores, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, self.width)
    return nn.Dense(self.width, dtype=self.dtype, kernel_init=self.kernel_init,
                    name="out")(y)


class Block(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x)) with gelu; dropout on each sublayer's output."""

  width: int
  heads: int
  mlp_ratio: int
  dropout: float
  kernel_init: Callable[..., Any]
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    y = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
    y = CausalSelfAttention(self.width, self.heads, self.kernel_init, self.dtype,
                            name="attn")(y)
    x = x + self._drop(y, train).astype(x.dtype)
    y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
    y = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, kernel_init=self.kernel_init,
                 name="mlp_in")(y)
    y = nn.Dense(self.width, dtype=self.dtype, kernel_init=self.kernel_init,
                 name="mlp_out")(nn.gelu(y))
    return x + self._drop(y, train).astype(x.dtype)

  def _drop(self, y: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return y


class Transformer(nn.Module):
  """Causal byte-level LM: tokens [batch, L] (L <= seq_len) -> float32 logits
  [batch, L, vocab_size]; logits at position t depend on tokens 0..t only."""

  vocab_size: int = 256
  seq_len: int = 128  # context length: positions with a learned embedding
  width: int = 128
  depth: int = 2
  heads: int = 4
  mlp_ratio: int = 4
  tied: bool = True  # logits = embed.attend(h); else a Dense "logits"
  dropout: float = 0.0
  kernel_init: Callable[..., Any] = DEFAULT_INIT
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block in the backward pass (jax.checkpoint)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    assert x.ndim == 2, f"want tokens [batch, L], got shape {x.shape}"
    length = x.shape[1]
    assert length <= self.seq_len, f"L={length} exceeds seq_len={self.seq_len}"
    tokens = x.astype(jnp.int32)
    embed = TokenEmbedding(self.vocab_size, self.width, self.kernel_init, self.dtype,
                           name="embed")
    pos = self.param("pos_embed", self.kernel_init, (self.seq_len, self.width), jnp.float32)
    h = embed(tokens) + pos[:length]
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    for i in range(self.depth):
      h = block(self.width, self.heads, self.mlp_ratio, self.dropout, self.kernel_init,
                self.dtype, name=f"block{i}")(h, train)
    h = nn.LayerNorm(dtype=self.dtype, name="ln_f")(h)
    if self.tied:
      logits = embed.attend(h)
    else:
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=self.kernel_init,
                        name="logits")(h)
    return logits.astype(jnp.float32)
