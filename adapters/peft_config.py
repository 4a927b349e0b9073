"""Which options of a PEFT ``adapter_config.json`` loraswap can serve exactly.

Adapters trained elsewhere (transformers Trainer, TRL, Unsloth, Axolotl) arrive as a PEFT
folder whose config carries every ``LoraConfig`` field of the PEFT version that wrote it.
Each field falls in one of four kinds:

* **honoured**: it decides how the adapter is applied and the engine applies it exactly
  (``r``, ``lora_alpha``, ``use_rslora``, ``target_modules``, a classification head in
  ``modules_to_save``, ``task_type``);
* **training-only or descriptive**: it changed how the adapter was trained or records
  where it came from, and does not change its output once saved (``lora_dropout``,
  ``init_lora_weights`` of the plain kinds, ``inference_mode``, ``peft_version``, …);
* **refused when set**: the engine cannot reproduce PEFT's output with it (DoRA,
  ``rank_pattern``, ``layer_replication``, …): an :class:`AdapterIncompatibleError` (422)
  that names the option, never a silently different answer;
* **unknown** (written by a newer PEFT): accepted while it holds an "off" value (``None``,
  ``False``, empty), refused naming it otherwise, since its effect cannot be known.

:func:`check_peft_options` applies this to the raw JSON before any tensor is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from loraswap.core.errors import AdapterIncompatibleError

SUPPORTED_PEFT_TYPE = "LORA"

# Module names PEFT puts in ``modules_to_save`` for a classification head (SEQ_CLS and
# TOKEN_CLS models get ``["classifier", "score"]``; Llama-family heads are ``score``).
CLASSIFICATION_HEAD_MODULES = frozenset({"classifier", "score"})
HEAD_TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS")

# Read by the loader or the validator (they decide the adapter's output).
_HONOURED = frozenset({
    "peft_type", "task_type", "r", "lora_alpha", "use_rslora", "target_modules", "bias",
    "modules_to_save", "fan_in_fan_out", "init_lora_weights",
})
# Training-time or bookkeeping fields: they do not change a saved adapter's output.
# ``exclude_modules`` / ``layers_to_transform`` / ``layers_pattern`` only narrowed where
# factors were created; the tensors present say where they are, and each is shape-checked.
_DESCRIPTIVE = frozenset({
    "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "lora_dropout", "exclude_modules", "layers_to_transform", "layers_pattern",
    "megatron_core", "qalora_group_size", "ensure_weight_tying",
    # Initialisation recipes that leave the base weights untouched: only A/B's start.
    "eva_config",
})
# Known options the engine cannot honour: refused whenever they hold a non-"off" value.
_REFUSED = {
    "use_dora": "DoRA (weight-decomposed LoRA) needs a per-column magnitude the engine "
                "does not apply",
    "rank_pattern": "per-module ranks are not supported; save the adapter with one r",
    "alpha_pattern": "per-module alphas are not supported; save the adapter with one "
                     "lora_alpha",
    "layer_replication": "layer replication changes the base model's layer stack",
    "lora_bias": "LoRA bias terms are not applied by the engine",
    "use_qalora": "QA-LoRA pools the input and is not applied by the engine",
    "trainable_token_indices": "trained token embeddings are not applied by the engine",
    "target_parameters": "LoRA on raw parameters (not modules) is not applied",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not applied by the engine",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "loftq_config": "LoftQ adapters belong to a LoftQ-quantized copy of the base",
    "corda_config": "CorDA initialisation rewrites the base weights",
    "lora_ga_config": "LoRA-GA initialisation rewrites the base weights",
    "velora_config": "VeLoRA is not applied by the engine",
    "monteclora_config": "MonteCLoRA is not applied by the engine",
    "use_bdlora": "block-diagonal LoRA is not applied by the engine",
    "arrow_config": "Arrow routing between adapters is not applied by the engine",
    "kasa_config": "KaSA is not applied by the engine",
}
# ``init_lora_weights`` values that only change how A and B start (the base is untouched).
# PiSSA, OLoRA, CorDA and LoftQ rewrite the base weights, so the adapter alone does not
# fit the unmodified base (unless it was converted, which saves ``init_lora_weights=true``).
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal"})


def is_off(value: Any) -> bool:
    """Whether an option holds its "feature off" value (``None``, ``False`` or empty)."""
    return value is None or value is False or (isinstance(value, str | list | dict | tuple)
                                               and not value)


def _refuse(option: str, value: Any, why: str) -> AdapterIncompatibleError:
    return AdapterIncompatibleError(f"adapter_config.json option {option}={value!r} is not "
                                    f"supported: {why}")


def _check_modules_to_save(raw: Mapping[str, Any]) -> None:
    modules = raw.get("modules_to_save")
    if is_off(modules):
        return
    names = [modules] if isinstance(modules, str) else modules
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _refuse("modules_to_save", modules, "expected a list of module names")
    extra = sorted(set(names) - CLASSIFICATION_HEAD_MODULES)
    if extra:
        heads = ", ".join(sorted(CLASSIFICATION_HEAD_MODULES))
        raise _refuse("modules_to_save", modules,
                      f"only a classification head ({heads}) may be saved with the adapter; "
                      f"{', '.join(extra)} would replace base-model weights")
    if raw.get("task_type") not in HEAD_TASK_TYPES:
        raise _refuse("modules_to_save", modules,
                      f"a classification head needs task_type {' or '.join(HEAD_TASK_TYPES)}, "
                      f"not {raw.get('task_type')!r}")


def check_peft_options(raw: Mapping[str, Any]) -> None:
    """Refuse a PEFT config the engine cannot apply exactly, naming the option (422).

    Called on the raw ``adapter_config.json`` before any tensor is read; value checks of
    ``r``, ``lora_alpha`` and ``target_modules`` are the reader's.
    """
    peft_type = raw.get("peft_type", SUPPORTED_PEFT_TYPE)
    if peft_type != SUPPORTED_PEFT_TYPE:
        raise _refuse("peft_type", peft_type, "only LoRA adapters (peft_type LORA) are "
                      "served; IA3, LoHa, LoKr, prompt and prefix tuning and the other "
                      "PEFT methods are not")
    for option, why in _REFUSED.items():
        if not is_off(raw.get(option)):
            raise _refuse(option, raw[option], why)
    if raw.get("fan_in_fan_out"):
        raise _refuse("fan_in_fan_out", raw["fan_in_fan_out"],
                      "transposed (Conv1D, GPT-2 style) weights do not fit a Llama base")
    if raw.get("bias", "none") != "none":
        raise _refuse("bias", raw["bias"], "bias terms are not applied by the engine; "
                      "train with bias='none'")
    init = raw.get("init_lora_weights", True)
    if not (isinstance(init, bool) or (isinstance(init, str) and init in _PLAIN_INITS)):
        raise _refuse("init_lora_weights", init, "this initialisation rewrites the base "
                      "weights; convert the adapter to plain LoRA before saving it "
                      "(PEFT's path_initial_model_for_weight_conversion)")
    _check_modules_to_save(raw)
    known = _HONOURED | _DESCRIPTIVE | set(_REFUSED)
    for option in sorted(set(raw) - known):
        if not is_off(raw[option]):
            raise _refuse(option, raw[option], "this PEFT option is unknown to loraswap, so "
                          "its effect on the output cannot be reproduced")


# Suffixes that name a quantized or re-packaged copy of the same weights (Unsloth, GGUF).
_COPY_SUFFIX = re.compile(r"(-unsloth)?(-bnb)?-(4|8)bit$|-gguf$")


def base_name_key(name_or_path: str) -> str:
    """The comparable part of a base model reference: the last path segment, lowercased,
    without quantized-copy suffixes (``unsloth/SmolLM2-135M-Instruct-bnb-4bit`` and
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` both give ``smollm2-135m-instruct``)."""
    last = name_or_path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    return _COPY_SUFFIX.sub("", last)
