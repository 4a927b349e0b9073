"""The checks that decide whether decoded adapter weights fit a served base and engine.

One function per check, shared by registration (:mod:`loraswap.adapters.validation`), the engine
(slot table, classification heads) and the request path, so a rule and its message exist
once: the rank limit (:func:`check_rank`) and the classification head
(:func:`check_head`).
"""

from __future__ import annotations

from collections.abc import Sequence

from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.adapters.package import TaskKind
from loraswap.core.errors import AdapterIncompatibleError, AdapterValidationError

RANK_SETTING = "LORASWAP_MAX_LORA_RANK"


def check_rank(name: str, rank: int, max_rank: int) -> None:
    """Refuse a LoRA rank above ``max_rank`` (the slot table's width) with a 422."""
    if rank > max_rank:
        raise AdapterIncompatibleError(
            f"{name}: rank {rank} exceeds the maximum {max_rank} ({RANK_SETTING})")


def check_head(weights: LoraAdapterWeights, task: TaskKind | None = None, *,
               labels: Sequence[str] | None = None, hidden_size: int | None = None,
               base_name: str = "the base model") -> list[str]:
    """Check ``weights``' classification head; the class names in head order.

    ``task`` defaults to the one of the adapter's PEFT ``task_type``. A seq-cls / token-cls
    adapter needs a head; its rows must equal ``len(labels)`` when labels are given (else
    the names are ``LABEL_<i>``, as transformers names them) and its columns
    ``hidden_size`` when given. A causal-lm adapter has no classes (empty list).
    """
    kind = task or TaskKind.from_peft_task_type(weights.config.task_type) or TaskKind.CAUSAL_LM
    if not kind.has_labels:
        return []
    head = weights.head
    if head is None:
        raise AdapterValidationError(
            f"{weights.name}: a {kind} adapter needs a classification head (score.weight "
            "via modules_to_save), and its weights have none")
    if labels is not None and len(labels) != head.num_labels:
        raise AdapterValidationError(
            f"{weights.name}: the classification head has {head.num_labels} outputs, but the "
            f"manifest lists {len(labels)} labels")
    columns = int(head.weight.shape[1])
    if hidden_size is not None and columns != hidden_size:
        raise AdapterIncompatibleError(
            f"{weights.name}: the classification head reads hidden size {columns}, "
            f"{base_name} has {hidden_size}")
    return list(labels) if labels is not None else [f"LABEL_{i}" for i in
                                                     range(head.num_labels)]
