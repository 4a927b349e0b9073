"""Which base-model families the engine serves: the one check the loader and runner share."""

from __future__ import annotations

from typing import Any

from loraswap.core.errors import ModelLoadError

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma"})
"""``config.model_type`` values accepted: families whose decoder block is Llama's, up to
q/k/v biases (Qwen2, Qwen2.5), q/k head norms (Qwen3) and a scaled embedding with
``1 + weight`` norms (Gemma). Phi-3 (fused qkv), Gemma 2/3 (soft-capping, extra norms,
sliding layers) and mixture-of-experts models are not."""


def check_model_config(config: Any) -> None:
    """Raise :class:`ModelLoadError` naming the ``model_type`` unless the engine serves it.

    ``config`` is a transformers config or a ``config.json`` dict. Sliding-window layers
    (Qwen2 with ``use_sliding_window``) are refused too: the runner attends to the whole
    context and would silently differ from the model.
    """
    values: dict[str, Any] = config if isinstance(config, dict) else vars(config)
    model_type = values.get("model_type") or getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
        raise ModelLoadError(
            f"unsupported model_type {model_type!r}: the engine serves Llama-style decoders "
            f"({supported})"
        )
    if "sliding_attention" in (values.get("layer_types") or ()):
        raise ModelLoadError(
            f"model_type {model_type!r} with sliding-window attention layers is not supported"
        )


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection of a served family's decoder block
    (Llama's, which every served family shares), from a ``config.json`` dict."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a generation: the tokenizer's EOS and the generation config's.

    The engine stops on these, and the training profile's reference generations stop on
    the same ones, so their output lengths measure the same thing.
    """
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
