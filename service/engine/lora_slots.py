"""Slot table of resident LoRA adapters and the batched LoRA delta.

Projections that read the same input form a *group* (q/k/v share the attention input,
gate/up the MLP input). For each group the table preallocates, indexed by slot:
``shrink[group]`` ``[layers, slots, in, k*R]`` (the members' ``A`` side by side) and
``expand[group]`` ``[layers, slots, R, out]`` (each member's ``B`` in the columns of its
part of the group's fused base output; member ``m`` reads shrink columns ``m*R..``). ``R``
is the max rank; smaller ranks are zero-padded and the LoRA scaling is folded into
``expand``. Keeping ``expand`` compact instead of block-diagonal ``[k*R, out]`` (one
``bmm`` per group) costs one ``bmm`` per member but reads a third of the bytes for q/k/v:
with one row per adapter a decode step is bound by reading every adapter's factors. Slot 0 is "no
adapter". Loading an adapter copies into its slot in place; the layout work is done then,
once, not at every step.

For a batch, rows are grouped by slot into a padded ``[slots, rows, in]`` block and the
delta is two ``bmm`` calls per group against the table itself, sliced to the range of
slots the batch uses: no weights are copied per step or when the batch's set of adapters
changes, and the number of kernel calls does not grow with the number of distinct
adapters (PEFT's mixed batch loops over them in Python). New adapters take the lowest
free slot, which keeps that range short.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraswap.adapters.compatibility import check_rank
from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.core.errors import AdapterIncompatibleError


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

    def member_columns(self) -> list[tuple[int, int]]:
        """(first column, width) of each member in the fused output."""
        return [(self.member_offset(i), width) for i, width in enumerate(self.out_features)]


class LoraBatchPlan:
    """How the rows of one forward pass map onto slots; applies the LoRA delta.

    Slots ``first .. first + count - 1`` each get a block of ``rows_per_slot`` rows. A slot
    with fewer rows (or none: it lies in the range but no row uses it) repeats a real row,
    which ``pad_mask`` zeroes, so its delta is exactly zero.

    The deltas go back to their rows by a gather (``scatter_index``: each row's position in
    the blocks, or the appended zero row for rows without an adapter), not by
    ``index_add_``: on this CPU ``index_add_`` of a bf16 ``[32, 960]`` delta took longer
    than the base model's own q/k/v GEMM, and with one row per adapter (32 distinct adapters
    in a batch of 32) it was the largest single cost of a decode step.
    """

    def __init__(
        self, table: LoraSlotTable, first: int, count: int, gather_index: torch.Tensor,
        rows_per_slot: int, pad_mask: torch.Tensor | None, groups: frozenset[str],
        scatter_index: torch.Tensor, rows_without_adapter: bool,
    ) -> None:
        self.table = table
        self.slots = slice(first, first + count)
        self.gather_index = gather_index
        self.rows_per_slot = rows_per_slot
        self.pad_mask = pad_mask
        self.groups = groups
        self.scatter_index = scatter_index
        self.rows_without_adapter = rows_without_adapter

    def add_delta(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """``y += lora_delta(x)`` for the rows of ``x`` ([rows, in]) and ``y`` ([rows, out])."""
        if group not in self.groups:
            return
        shrink = self.table.shrink(group)[layer, self.slots]
        expand = self.table.expand(group)[layer, self.slots]
        blocks = x.index_select(0, self.gather_index).to(shrink.dtype)
        blocks = blocks.view(shrink.shape[0], self.rows_per_slot, -1)
        if self.pad_mask is not None:
            blocks = blocks * self.pad_mask
        reduced = torch.bmm(blocks, shrink)
        spec = self.table.groups[group]
        if len(spec.members) == 1:
            delta = torch.bmm(reduced, expand)
        else:
            rank = self.table.max_rank
            delta = torch.cat([
                torch.bmm(reduced[..., index * rank : (index + 1) * rank],
                          expand[..., start : start + width])
                for index, (start, width) in enumerate(spec.member_columns())
            ], dim=-1)
        delta = delta.view(-1, delta.shape[-1])
        if self.rows_without_adapter:
            delta = torch.cat([delta, delta.new_zeros(1, delta.shape[-1])])
        y.add_(delta.index_select(0, self.scatter_index).to(y.dtype))


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
        self._shrink: dict[str, torch.Tensor] = {}
        self._expand: dict[str, torch.Tensor] = {}
        for group in groups:
            width = max_rank * len(group.members)
            for index, member in enumerate(group.members):
                self._member_group[member] = (group, index)
            for store, shape in ((self._shrink, (group.in_features, width)),
                                 (self._expand, (max_rank, group.fused_out))):
                store[group.name] = torch.zeros((num_layers, max_loras + 1, *shape),
                                                dtype=dtype, device=device)
        self._slot_targets: list[frozenset[str]] = [frozenset()] * (max_loras + 1)

    @property
    def targets(self) -> frozenset[str]:
        """Projection names an adapter may target."""
        return frozenset(self._member_group)

    @property
    def num_bytes(self) -> int:
        """Memory held by the slot table."""
        tensors = [*self._shrink.values(), *self._expand.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def check_compatible(self, adapter: LoraAdapterWeights) -> None:
        """Raise :class:`AdapterIncompatibleError` unless ``adapter`` fits this table."""
        extra = adapter.targets - self.targets
        if extra:
            raise AdapterIncompatibleError(
                f"{adapter.name}: targets {sorted(extra)} are outside the servable targets "
                f"{sorted(self.targets)}"
            )
        check_rank(adapter.name, adapter.rank, self.max_rank)
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
                group, index = self._member_group[module]
                rank = lora_a.shape[0]
                cols = slice(index * self.max_rank, index * self.max_rank + rank)
                start = group.member_offset(index)
                out = slice(start, start + group.out_features[index])
                self._shrink[group.name][layer, slot, :, cols].copy_(lora_a.t())
                self._expand[group.name][layer, slot, :rank, out].copy_(lora_b.t() * scaling)
        self._slot_targets[slot] = adapter.targets

    def clear(self, slot: int) -> None:
        """Zero ``slot`` so that it holds no adapter."""
        self._check_slot(slot)
        self._zero(slot)
        self._slot_targets[slot] = frozenset()

    def shrink(self, group: str) -> torch.Tensor:
        """``[layers, slots, in, k*R]`` shrink factors of ``group``."""
        return self._shrink[group]

    def expand(self, group: str) -> torch.Tensor:
        """``[layers, slots, R, out]`` expand factors (scaling folded in) of ``group``."""
        return self._expand[group]

    def plan(self, row_slots: torch.Tensor) -> LoraBatchPlan | None:
        """Group the rows of a forward pass by slot; None when no row uses an adapter."""
        slots = row_slots.tolist()
        rows_of: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            if slot:
                rows_of.setdefault(slot, []).append(row)
        if not rows_of:
            return None
        first, last = min(rows_of), max(rows_of)
        rows_per_slot = max(len(rows) for rows in rows_of.values())
        any_row = next(iter(rows_of.values()))[0]
        gather: list[int] = []
        valid: list[bool] = []
        # Rows without an adapter read the zero row appended after the blocks.
        block_rows = (last - first + 1) * rows_per_slot
        scatter = [block_rows] * len(slots)
        for slot in range(first, last + 1):
            rows = rows_of.get(slot, [])
            for offset, row in enumerate(rows):
                scatter[row] = len(gather) + offset
            missing = rows_per_slot - len(rows)
            gather += rows + [any_row] * missing
            valid += [True] * len(rows) + [False] * missing
        pad_mask = None
        if not all(valid):
            pad_mask = torch.tensor(valid, dtype=self.dtype, device=self.device)
            pad_mask = pad_mask.view(last - first + 1, rows_per_slot, 1)
        groups = frozenset(self._member_group[target][0].name for slot in rows_of
                           for target in self._slot_targets[slot])
        return LoraBatchPlan(
            self, first, last - first + 1,
            torch.tensor(gather, dtype=torch.long, device=self.device), rows_per_slot,
            pad_mask, groups, torch.tensor(scatter, dtype=torch.long, device=self.device),
            rows_without_adapter=block_rows in scatter,
        )

    def _zero(self, slot: int) -> None:
        with torch.no_grad():
            for name in self._shrink:
                self._shrink[name][:, slot].zero_()
                self._expand[name][:, slot].zero_()

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot <= self.max_loras:
            raise ValueError(f"slot {slot} outside 1..{self.max_loras}")
