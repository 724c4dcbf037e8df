"""A decoder-only Transformer LM in Flax NNX, with teacher-forced loss and a fixed-shape decoder.

Accelerator knobs (``ModelOptions``; the defaults are the original small model, unchanged):

- ``attention``: ``nnx`` (Flax's own, explicit causal mask), ``xla`` / ``cudnn``
  (``jax.nn.dot_product_attention``, causal, no mask tensor; ``cudnn`` is flash attention), ``auto``
  (cudnn on a GPU with 16-bit inputs, else xla).
- ``remat``: ``none`` | ``full`` | ``dots`` | ``dots_no_batch``: what a block saves for the backward pass.
- ``scan_layers``: blocks stored stacked (leading layer axis) and applied with ``jax.lax.scan``: one block
  compiled instead of N.

The compute dtype is not the model's business: the train step casts fp32 master params to the experiment's
``compute_dtype`` (programs.py) and every layer computes in the dtype of its params.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from pax_trainer.metrics import WeightedScalar, WeightedScalars, weighted_mean

ATTENTION_IMPLS = ("nnx", "xla", "cudnn", "auto")
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclass(frozen=True)
class ModelOptions:
    """How the model computes (not what): attention implementation, rematerialisation, scan over layers."""

    attention: str = "nnx"
    remat: str = "none"
    scan_layers: bool = False

    def check(self) -> None:
        """ValueError naming the field on an unknown choice."""
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {', '.join(REMAT_POLICIES)}")


def resolve_attention(impl: str, dtype: Any, head_dim: int) -> str:
    """'auto' -> 'cudnn' on a GPU for bf16/fp16 inputs with head_dim <= 128 (flash attention), else 'xla'."""
    if impl != "auto":
        return impl
    ok = (
        jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim <= 128
    )
    return "cudnn" if ok else "xla"


def causal_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, impl: str = "xla", **_: Any
) -> jax.Array:
    """``attention_fn`` for nnx.MultiHeadAttention: causal jax.nn.dot_product_attention ([B, T, N, H])."""
    implementation = resolve_attention(impl, query.dtype, query.shape[-1])
    return jax.nn.dot_product_attention(query, key, value, is_causal=True, implementation=implementation)


def promote_to_params_dtype(args: Any, /, *, dtype: Any = None, inexact: bool = True) -> Any:
    """``promote_dtype`` for nnx.Embed that ignores the dtype fixed at construction, so the embedding
    computes in the dtype its (cast) params arrive in, like every other layer: nnx.Embed stores
    ``dtype or param_dtype`` (float32), which silently turned a bf16 step back into fp32."""
    del dtype
    return dtypes.promote_dtype(args, inexact=inexact)


class Block(nnx.Module):
    """Pre-LayerNorm self-attention + MLP block."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, rngs: nnx.Rngs, attention: str = "nnx"
    ) -> None:
        self.ln_attn = nnx.LayerNorm(dim, rngs=rngs)
        extra = (
            {}
            if attention == "nnx"
            else {"attention_fn": functools.partial(causal_attention, impl=attention)}
        )
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=dim, decode=False, deterministic=True, rngs=rngs, **extra
        )
        self.ln_mlp = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = x + self.attn(self.ln_attn(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln_mlp(x))))


def _stack(blocks: list[Block]) -> Block:
    """One Block whose every variable has a leading layer axis (for scan over layers)."""
    graphdef = nnx.graphdef(blocks[0])
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks]))


class TransformerLM(nnx.Module):
    """Token + learned position embeddings, N blocks, tied output embedding."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        rngs: nnx.Rngs,
        mlp_dim: int | None = None,
        options: ModelOptions = ModelOptions(),
    ) -> None:
        options.check()
        self.options = options
        self.embed = nnx.Embed(vocab_size, dim, promote_dtype=promote_to_params_dtype, rngs=rngs)
        self.pos = nnx.Embed(max_len, dim, promote_dtype=promote_to_params_dtype, rngs=rngs)
        blocks = [
            Block(dim, num_heads, mlp_dim or 4 * dim, rngs, options.attention) for _ in range(num_layers)
        ]
        self.layers: nnx.Module = _stack(blocks) if options.scan_layers else nnx.List(blocks)
        self.ln_out = nnx.LayerNorm(dim, rngs=rngs)

    def hidden(self, tokens: jax.Array) -> jax.Array:
        """Final-LayerNorm activations [B, T, D] (in the params' dtype), before the output projection."""
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[-1]))[None]
        mask = nnx.make_causal_mask(tokens) if self.options.attention == "nnx" else None
        policy = REMAT_POLICIES[self.options.remat]
        remat = self.options.remat != "none"

        def apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, state)(x, mask)

        if self.options.scan_layers:
            graphdef, state = nnx.split(self.layers)

            def body(x: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, None]:
                return apply(graphdef, layer_state, x), None

            if remat:
                body = jax.checkpoint(body, policy=policy, prevent_cse=False)
            x, _ = jax.lax.scan(body, x, state)
        else:
            for layer in self.layers:
                if remat:
                    graphdef, state = nnx.split(layer)
                    x = jax.checkpoint(functools.partial(apply, graphdef), policy=policy)(state, x)
                else:
                    x = layer(x, mask)
        return self.ln_out(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """fp32 logits [B, T, V] (accumulated in fp32 whatever the compute dtype)."""
        emb = self.embed.embedding[...]
        return jnp.dot(self.hidden(tokens), emb.T, preferred_element_type=jnp.float32)


# --- loss ---------------------------------------------------------------------------------------------------
def _xent_chunks(
    h: jax.Array, emb: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int, grads: bool
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Σw·xent, Σw·correct, and (if grads) their gradients wrt h and emb; fp32 logits one chunk at a time."""
    n, d = h.shape
    pad = -n % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets, weights = jnp.pad(targets, (0, pad)), jnp.pad(weights, (0, pad))
    xs = (h.reshape(-1, chunk, d), targets.reshape(-1, chunk), weights.reshape(-1, chunk))
    f32 = jnp.float32

    def body(carry: tuple[jax.Array, ...], x: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], Any]:
        loss, correct, demb = carry
        hc, tc, wc = x
        logits = jnp.dot(hc, emb.T, preferred_element_type=f32)  # [chunk, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
        loss = loss + jnp.sum((lse - target_logit) * wc)
        correct = correct + jnp.sum((jnp.argmax(logits, -1) == tc).astype(f32) * wc)
        if not grads:
            return (loss, correct, demb), None
        g = (jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(tc, emb.shape[0], dtype=f32)) * wc[:, None]
        g = g.astype(h.dtype)
        dh = jnp.dot(g, emb, preferred_element_type=f32).astype(h.dtype)
        demb = demb + jnp.dot(g.T, hc, preferred_element_type=f32)
        return (loss, correct, demb), dh

    zero = jnp.zeros((), f32)
    init = (zero, zero, jnp.zeros(emb.shape, f32) if grads else zero)
    (loss, correct, demb), dh = jax.lax.scan(body, init, xs)
    if not grads:
        return loss, correct, None, None
    return loss, correct, dh.reshape(-1, d)[:n], demb.astype(emb.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def fused_xent(
    h: jax.Array, emb: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """(Σ w·xent, Σ w·[argmax == target]) of logits h @ embᵀ, without materialising [N, V] logits.

    The gradients are computed in the forward pass, chunk by chunk (softmax − onehot, times h or emb), so
    the backward pass only scales them: 6·N·D·V FLOPs in all, no recomputation, peak memory one chunk.
    """
    loss, correct, _, _ = _xent_chunks(h, emb, targets, weights, chunk, grads=False)
    return loss, correct


def _fused_xent_fwd(
    h: jax.Array, emb: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    loss, correct, dh, demb = _xent_chunks(h, emb, targets, weights, chunk, grads=True)
    return (loss, correct), (dh, demb, targets, weights)


def _fused_xent_bwd(
    chunk: int,
    res: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    cotangents: tuple[jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array, None, None]:
    dh, demb, _, _ = res
    g = cotangents[0]
    return (g * dh).astype(dh.dtype), (g * demb).astype(demb.dtype), None, None


fused_xent.defvjp(_fused_xent_fwd, _fused_xent_bwd)


def lm_loss(
    model: TransformerLM, batch: dict[str, jax.Array], xent_chunk: int = 0
) -> tuple[jax.Array, WeightedScalars]:
    """Next-token cross-entropy on batch['tokens'] weighted by batch['weights'] (of the targets).

    xent_chunk > 0: fused_xent over chunks of that many tokens (no [B, T, V] logits); 0: plain log_softmax.
    """
    tokens, weights = batch["tokens"], batch["weights"][:, 1:].astype(jnp.float32)
    if xent_chunk > 0:
        h = model.hidden(tokens[:, :-1])
        targets = tokens[:, 1:]
        emb = model.embed.embedding[...]
        xent_sum, correct_sum = fused_xent(
            h.reshape(-1, h.shape[-1]), emb, targets.reshape(-1), weights.reshape(-1), xent_chunk
        )
        w = jnp.sum(weights)
        denom = jnp.maximum(w, 1e-9)
        loss = WeightedScalar(xent_sum / denom, w)
        accuracy = WeightedScalar(correct_sum / denom, w)
    else:
        logits = model(tokens[:, :-1])
        targets = tokens[:, 1:]
        xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        loss = weighted_mean(xent, weights)
        accuracy = weighted_mean(correct, weights)
    return loss.value, {
        "loss": loss,
        "accuracy": accuracy,
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
