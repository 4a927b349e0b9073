"""Base models with random weights in the shapes the GPU check measures, built on the device.

Decode time depends on the shapes and the precision, not on the values, so the GPU check
(``scripts/gpu-check.sh``) builds a SmolLM2-135M-shaped and a Llama-3-8B-shaped base on the
machine itself: nothing has to travel but the repository. The NF4 variant replaces each
decoder projection by a bitsandbytes ``Linear4bit`` quantized from those weights, as
``load_base_model`` gets with ``Quantization.NF4`` (embeddings, norms and the head stay in
bf16). bitsandbytes is imported only when NF4 is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BaseShape:
    """A Llama-family decoder's dimensions."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_theta: float = 10000.0

    def llama_config(self) -> Any:
        """The transformers ``LlamaConfig`` of this shape."""
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, vocab_size=self.vocab_size,
            max_position_embeddings=8192, rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )


SHAPES: dict[str, BaseShape] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct's config.json.
    "smollm2-135m": BaseShape("smollm2-135m", 30, 576, 1536, 9, 3, 49152, True, 100000.0),
    # meta-llama/Meta-Llama-3-8B's config.json (rope scaling aside: it changes no step time).
    "llama3-8b": BaseShape("llama3-8b", 32, 4096, 14336, 32, 8, 128256, False, 500000.0),
    # The same two families at a size a CPU runs in seconds (``--small``).
    "smollm2-tiny": BaseShape("smollm2-tiny", 2, 96, 192, 3, 1, 512, True),
    "llama3-tiny": BaseShape("llama3-tiny", 2, 128, 256, 4, 2, 1024, False),
}


def word_tokenizer(vocab_size: int) -> Any:
    """A tokenizer whose every id decodes (``t<id>``): the engine detokenizes whatever a
    random model generates, anywhere in its vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    inner = Tokenizer(WordLevel(vocab, unk_token="t0"))
    inner.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="t0", eos_token="t1",
                                   pad_token="t1", unk_token="t0")


def build_random_base(shape: BaseShape, device: torch.device, seed: int = 0) -> Any:
    """A bf16 causal LM of ``shape`` with random weights, created on ``device`` (eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape.llama_config(), dtype=torch.bfloat16)
    return model.eval()


def quantize_nf4(model: Any) -> int:
    """Replace every decoder projection of ``model`` by an NF4 ``Linear4bit`` (double
    quantization, bf16 compute), quantized on the weights' device; how many were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                device = child.weight.device
                quantized = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                    device="meta")
                quantized.weight = bnb.nn.Params4bit(
                    child.weight.data.contiguous(), requires_grad=False,
                    compress_statistics=True, quant_type="nf4")
                if child.bias is not None:
                    quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, quantized.to(device))
                del child
                replaced += 1
    return replaced


def weight_bytes_per_step(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter (with its 4-bit quantization
    state), except an untied input embedding, of which a step reads only its tokens' rows."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = embed.data_ptr() == head.data_ptr()
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if param.data_ptr() in seen or (param is embed and not tied):
            continue
        seen.add(param.data_ptr())
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        while state is not None:
            for tensor in (getattr(state, "absmax", None), getattr(state, "code", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
            state = getattr(state, "state2", None)
    return total
