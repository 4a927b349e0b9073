"""Slot table of resident LoRA adapters and the batched LoRA delta.

Every targetable projection has one preallocated tensor per factor, indexed by slot:
``A[module]`` is ``[layers, slots, in, R]`` and ``B[module]`` is ``[layers, slots, R, out]``
(``R`` = max rank; smaller ranks are zero-padded, the LoRA scaling is folded into ``B``).
Slot 0 is "no adapter" and stays zero. Loading an adapter copies into its slot in place.

Projections that read the same input are applied together as one *group* (q/k/v share the
attention input, gate/up the MLP input): one shrink GEMM against the members' concatenated
``A`` and one expand GEMM against a block-diagonal ``B`` whose columns line up with the
group's fused base output. For a batch, rows are grouped by slot into a padded
``[adapters, rows, in]`` block and both GEMMs run as one ``bmm`` each, so the number of
kernel calls does not grow with the number of distinct adapters (PEFT's mixed batch loops
in Python over them). The per-active-set weight layout is built once when the set of
adapters in the running batch changes, not at every step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from adapters.errors import AdapterIncompatibleError
from adapters.lora_format import LoraAdapterWeights


@dataclass(frozen=True)
class ProjectionGroup:
    """Projections of one decoder layer that consume the same input tensor."""

    name: str
    members: tuple[str, ...]
    in_features: int
    out_features: tuple[int, ...]

    @property
    def fused_out(self) -> int:
        """Width of the members' outputs concatenated in member order."""
        return sum(self.out_features)

    def member_offset(self, index: int) -> int:
        """Column where member ``index`` starts in the fused output."""
        return sum(self.out_features[:index])


@dataclass
class _GroupWeights:
    shrink: torch.Tensor  # [layers, G, in, k*R]
    expand: torch.Tensor  # [layers, G, k*R, fused_out]


class ActiveLoraWeights:
    """Compute layout for one set of active slots: per group, stacked shrink/expand weights."""

    def __init__(self, slots: tuple[int, ...], groups: dict[str, _GroupWeights]) -> None:
        self.slots = slots
        self._groups = groups

    def for_group(self, group: str) -> _GroupWeights | None:
        """Weights for ``group``, or None when no active adapter targets it."""
        return self._groups.get(group)


class LoraBatchPlan:
    """How the rows of one forward pass map onto adapters; applies the LoRA delta.

    Rows are gathered into a ``[adapters, rows_per_adapter, in]`` block. Where an adapter
    has fewer rows than the block's height the gather repeats a real row and ``pad_mask``
    zeroes it, so its delta is exactly zero and scatters harmlessly.
    """

    def __init__(
        self, weights: ActiveLoraWeights, gather_index: torch.Tensor, rows_per_adapter: int,
        pad_mask: torch.Tensor | None, compute_dtype: torch.dtype,
    ) -> None:
        self.weights = weights
        self.gather_index = gather_index
        self.rows_per_adapter = rows_per_adapter
        self.pad_mask = pad_mask
        self.compute_dtype = compute_dtype

    def add_delta(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """``y += lora_delta(x)`` for the rows of ``x`` ([rows, in]) and ``y`` ([rows, out])."""
        weights = self.weights.for_group(group)
        if weights is None:
            return
        shrink, expand = weights.shrink[layer], weights.expand[layer]
        blocks = x.index_select(0, self.gather_index).to(self.compute_dtype)
        blocks = blocks.view(shrink.shape[0], self.rows_per_adapter, -1)
        if self.pad_mask is not None:
            blocks = blocks * self.pad_mask
        delta = torch.bmm(torch.bmm(blocks, shrink), expand)
        y.index_add_(0, self.gather_index, delta.view(-1, delta.shape[-1]).to(y.dtype))


class LoraSlotTable:
    """Preallocated per-slot LoRA factors for every targetable projection of the model."""

    def __init__(
        self, *, num_layers: int, groups: list[ProjectionGroup], max_loras: int, max_rank: int,
        dtype: torch.dtype, device: torch.device,
    ) -> None:
        self.num_layers = num_layers
        self.groups = {group.name: group for group in groups}
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = device
        self._member_group: dict[str, tuple[ProjectionGroup, int]] = {}
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        for group in groups:
            for index, member in enumerate(group.members):
                self._member_group[member] = (group, index)
                shape_a = (num_layers, max_loras + 1, group.in_features, max_rank)
                shape_b = (num_layers, max_loras + 1, max_rank, group.out_features[index])
                self._a[member] = torch.zeros(shape_a, dtype=dtype, device=device)
                self._b[member] = torch.zeros(shape_b, dtype=dtype, device=device)
        self._slot_rank = [0] * (max_loras + 1)
        self._slot_targets: list[frozenset[str]] = [frozenset()] * (max_loras + 1)
        self._generation = [0] * (max_loras + 1)
        self._active_cache: OrderedDict[tuple[tuple[int, int], ...], ActiveLoraWeights] = (
            OrderedDict()
        )

    @property
    def targets(self) -> frozenset[str]:
        """Projection names an adapter may target."""
        return frozenset(self._member_group)

    @property
    def num_bytes(self) -> int:
        """Memory held by the preallocated factors."""
        tensors = [*self._a.values(), *self._b.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def check_compatible(self, adapter: LoraAdapterWeights) -> None:
        """Raise :class:`AdapterIncompatibleError` unless ``adapter`` fits this table."""
        extra = adapter.targets - self.targets
        if extra:
            raise AdapterIncompatibleError(
                f"{adapter.name}: targets {sorted(extra)} are outside the servable targets "
                f"{sorted(self.targets)}"
            )
        if adapter.rank > self.max_rank:
            raise AdapterIncompatibleError(
                f"{adapter.name}: rank {adapter.rank} exceeds the maximum {self.max_rank} "
                "(LORASWAP_MAX_LORA_RANK)"
            )
        for (layer, module), (lora_a, lora_b) in adapter.factors.items():
            group, index = self._member_group[module]
            expected_in, expected_out = group.in_features, group.out_features[index]
            if layer >= self.num_layers:
                raise AdapterIncompatibleError(
                    f"{adapter.name}: layer {layer} does not exist (base has {self.num_layers})"
                )
            if lora_a.shape[1] != expected_in or lora_b.shape[0] != expected_out:
                raise AdapterIncompatibleError(
                    f"{adapter.name}: layer {layer} {module} maps {lora_a.shape[1]}->"
                    f"{lora_b.shape[0]}, the base projection is {expected_in}->{expected_out}"
                )

    def load(self, slot: int, adapter: LoraAdapterWeights) -> None:
        """Copy ``adapter`` into ``slot`` in place (the slot is cleared first)."""
        self._check_slot(slot)
        self.check_compatible(adapter)
        self._zero(slot)
        scaling = adapter.config.scaling
        with torch.no_grad():
            for (layer, module), (lora_a, lora_b) in adapter.factors.items():
                rank = lora_a.shape[0]
                self._a[module][layer, slot, :, :rank].copy_(lora_a.t())
                self._b[module][layer, slot, :rank, :].copy_(lora_b.t() * scaling)
        self._slot_rank[slot] = adapter.rank
        self._slot_targets[slot] = adapter.targets
        self._generation[slot] += 1

    def clear(self, slot: int) -> None:
        """Zero ``slot`` so that it holds no adapter."""
        self._check_slot(slot)
        self._zero(slot)
        self._slot_rank[slot] = 0
        self._slot_targets[slot] = frozenset()
        self._generation[slot] += 1

    def plan(self, row_slots: torch.Tensor) -> LoraBatchPlan | None:
        """Group the rows of a forward pass by slot; None when no row uses an adapter."""
        slots = row_slots.tolist()
        active = tuple(sorted({s for s in slots if s != 0}))
        if not active:
            return None
        weights = self._active_weights(active)
        rows_of: dict[int, list[int]] = {slot: [] for slot in active}
        for row, slot in enumerate(slots):
            if slot:
                rows_of[slot].append(row)
        rows_per_adapter = max(len(rows) for rows in rows_of.values())
        gather: list[int] = []
        valid: list[bool] = []
        for slot in active:
            rows = rows_of[slot]
            missing = rows_per_adapter - len(rows)
            gather += rows + [rows[0]] * missing
            valid += [True] * len(rows) + [False] * missing
        pad_mask = None
        if not all(valid):
            pad_mask = torch.tensor(valid, dtype=self.dtype, device=self.device)
            pad_mask = pad_mask.view(len(active), rows_per_adapter, 1)
        return LoraBatchPlan(
            weights, torch.tensor(gather, dtype=torch.long, device=self.device),
            rows_per_adapter, pad_mask, self.dtype,
        )

    def _active_weights(self, active: tuple[int, ...]) -> ActiveLoraWeights:
        key = tuple((slot, self._generation[slot]) for slot in active)
        cached = self._active_cache.get(key)
        if cached is not None:
            self._active_cache.move_to_end(key)
            return cached
        weights = self._build_active(active)
        self._active_cache[key] = weights
        while len(self._active_cache) > 2:
            self._active_cache.popitem(last=False)
        return weights

    def _build_active(self, active: tuple[int, ...]) -> ActiveLoraWeights:
        index = torch.tensor(active, dtype=torch.long, device=self.device)
        rank = max(self._slot_rank[slot] for slot in active)
        used = frozenset().union(*(self._slot_targets[slot] for slot in active))
        built: dict[str, _GroupWeights] = {}
        for group in self.groups.values():
            members = [m for m in group.members if m in used]
            if not members:
                continue
            shape_shrink = (self.num_layers, len(active), group.in_features, rank * len(members))
            shape_expand = (self.num_layers, len(active), rank * len(members), group.fused_out)
            shrink = torch.zeros(shape_shrink, dtype=self.dtype, device=self.device)
            expand = torch.zeros(shape_expand, dtype=self.dtype, device=self.device)
            for position, member in enumerate(members):
                member_index = group.members.index(member)
                cols = slice(position * rank, (position + 1) * rank)
                start = group.member_offset(member_index)
                out = slice(start, start + group.out_features[member_index])
                shrink[:, :, :, cols] = self._a[member].index_select(1, index)[..., :rank]
                expand[:, :, cols, out] = self._b[member].index_select(1, index)[:, :, :rank, :]
            built[group.name] = _GroupWeights(shrink=shrink, expand=expand)
        return ActiveLoraWeights(active, built)

    def _zero(self, slot: int) -> None:
        with torch.no_grad():
            for member in self._a:
                self._a[member][:, slot].zero_()
                self._b[member][:, slot].zero_()

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot <= self.max_loras:
            raise ValueError(f"slot {slot} outside 1..{self.max_loras}")
