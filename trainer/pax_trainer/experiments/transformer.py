"""A small decoder-only Transformer LM in Flax NNX, with teacher-forced loss and a fixed-shape decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pax_trainer.metrics import WeightedScalars, weighted_mean


class Block(nnx.Module):
    """Pre-LayerNorm self-attention + MLP block."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, rngs: nnx.Rngs) -> None:
        self.ln_attn = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=dim, decode=False, deterministic=True, rngs=rngs
        )
        self.ln_mlp = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_attn(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln_mlp(x))))


class TransformerLM(nnx.Module):
    """Token + learned position embeddings, N blocks, tied output embedding."""

    def __init__(
        self, vocab_size: int, max_len: int, dim: int, num_heads: int, num_layers: int, rngs: nnx.Rngs
    ) -> None:
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.pos = nnx.Embed(max_len, dim, rngs=rngs)
        self.layers = nnx.List([Block(dim, num_heads, 4 * dim, rngs) for _ in range(num_layers)])
        self.ln_out = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[-1]))[None]
        mask = nnx.make_causal_mask(tokens)
        for layer in self.layers:
            x = layer(x, mask)
        return self.embed.attend(self.ln_out(x)).astype(jnp.float32)


def lm_loss(model: TransformerLM, batch: dict[str, jax.Array]) -> tuple[jax.Array, WeightedScalars]:
    """Next-token cross-entropy on batch['tokens'] weighted by batch['weights'] (of the targets)."""
    tokens, weights = batch["tokens"], batch["weights"][:, 1:].astype(jnp.float32)
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    loss = weighted_mean(xent, weights)
    return loss.value, {
        "loss": loss,
        "accuracy": weighted_mean(correct, weights),
        "perplexity": type(loss)(jnp.exp(loss.value), loss.weight),
    }


def generate(
    model: TransformerLM,
    tokens: jax.Array,
    prompt_len: jax.Array,
    rng: jax.Array,
    temperature: float,
) -> jax.Array:
    """Fill tokens[:, prompt_len:] one position at a time (greedy if temperature == 0); fixed shapes."""
    length = tokens.shape[1]

    def body(pos: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        toks, key = carry
        logits = jax.lax.dynamic_index_in_dim(model(toks), pos - 1, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        if temperature > 0:
            nxt = jax.random.categorical(sub, logits / temperature, axis=-1)
        else:
            nxt = jnp.argmax(logits, axis=-1)
        keep = pos < prompt_len
        new = jnp.where(keep, toks[:, pos], nxt.astype(toks.dtype))
        return toks.at[:, pos].set(new), key

    out, _ = jax.lax.fori_loop(1, length, body, (tokens, rng))
    return out
