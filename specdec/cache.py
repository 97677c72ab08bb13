"""The one adapter that owns a causal LM's forward passes and KV cache.

Every cache operation in specdec goes through :class:`CausalLMAdapter`:
prefill, a forward over a block of new tokens, and :meth:`truncate`, the
rollback of rejected tokens. Whether a model can be rolled back safely is
decided once, at construction, by :func:`check_rollback_support`.

The adapter keeps a plain :class:`transformers.DynamicCache` with one full
attention layer per decoder layer. Sliding-window models still attend only
within their window, because their attention masks come from the config, but
no cache entry is ever evicted, so a rollback can never lose a needed state.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from transformers import DynamicCache, PreTrainedModel

from .errors import UnsupportedModelError

__all__ = ["CausalLMAdapter", "check_rollback_support", "text_config"]

# Attention layer kinds whose cache is a list of per-token keys and values.
_ROLLBACK_SAFE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def text_config(model: PreTrainedModel):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def check_rollback_support(model: PreTrainedModel) -> None:
    """Raise :class:`UnsupportedModelError` unless the model's cache can be truncated exactly."""
    name = type(model).__name__
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "forward", None)):
        raise UnsupportedModelError(f"expected a Hugging Face causal LM, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(f"{name} has no `config`: pass a transformers AutoModelForCausalLM model")
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise UnsupportedModelError(
            f"{name} has no language-modeling head; load it with AutoModelForCausalLM"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model; only decoder-only causal LMs are supported")
    if getattr(model, "_is_stateful", False):
        raise UnsupportedModelError(
            f"{name} keeps a recurrent state that cannot be rolled back to an earlier token; "
            "use an attention-only model"
        )
    supports_dynamic = getattr(type(model), "_supports_default_dynamic_cache", None)
    if supports_dynamic is not None and not supports_dynamic():
        raise UnsupportedModelError(f"{name} uses a custom cache that specdec cannot roll back")
    config_text = text_config(model)
    layer_types = getattr(config_text, "layer_types", None)
    if layer_types is not None:
        unsupported = sorted(set(layer_types) - _ROLLBACK_SAFE_LAYER_TYPES)
        if unsupported:
            raise UnsupportedModelError(
                f"{name} has layers of type {unsupported} (recurrent, linear, chunked or shared-KV attention); "
                "their cache cannot be rolled back token by token, so speculative decoding would be wrong"
            )
    if getattr(config_text, "attention_chunk_size", None) is not None:
        raise UnsupportedModelError(f"{name} uses chunked attention, whose cache cannot be rolled back")
    params = inspect.signature(model.forward).parameters
    if "cache" not in params and "past_key_values" not in params:
        raise UnsupportedModelError(f"{name}.forward takes no KV cache argument")


def _context_length(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class CausalLMAdapter:
    """A causal LM together with its KV cache, for a single sequence.

    ``length`` is the number of tokens whose keys and values are cached.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        check_rollback_support(model)
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._can_keep_last_logits = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        self.context_length = _context_length(text_config(model))
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if output_embeddings is not None and getattr(output_embeddings, "weight", None) is not None:
            self.vocab_size = int(output_embeddings.weight.shape[0])
        else:
            self.vocab_size = int(text_config(model).vocab_size)
        self._cache: DynamicCache | None = None
        self.length = 0
        self._capture: _LayerCapture | None = None

    @property
    def num_layers(self) -> int:
        return int(cast(int, _num_layers(text_config(self.model))))  # int(None) raises, as before

    def check_layers(self, layers: tuple[int, ...]) -> None:
        """Raise unless the hidden states of ``layers`` (HF ``output_hidden_states`` ids) can be captured."""
        _LayerCapture.check(self.model, layers)

    def capture(self, layers: tuple[int, ...] | None) -> None:
        """From now on record ``layers``' hidden states in every forward (``None``: stop, remove the hooks)."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        if layers is not None:
            self._capture = _LayerCapture(self.model, layers)

    @property
    def hidden_states(self) -> torch.Tensor:
        """``[n, len(layers), hidden]``: the captured layers for every position of the last forward."""
        return self.captured(0)

    def captured(self, row: int) -> torch.Tensor:
        """``[width, len(layers), hidden]``: batch row ``row``'s captured layers in the last forward."""
        if self._capture is None:
            raise RuntimeError("no layers are being captured: call capture(layers) first")
        return self._capture.stacked(row)

    def reset(self) -> None:
        """Forget every cached token (start of a new sequence)."""
        self._cache = DynamicCache()
        self.length = 0

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Run the model over new tokens appended to the cache.

        Args:
            token_ids: LongTensor [n], the tokens after the ``length`` cached ones.
            last_only: compute logits for the last position only (prefill).

        Returns:
            FloatTensor [n, vocab] (or [1, vocab] with ``last_only``) of raw logits.
        """
        if self._cache is None:
            self.reset()
        kwargs: dict[str, Any] = {self._cache_kwarg: self._cache, "use_cache": True}
        if last_only and self._can_keep_last_logits:
            kwargs["logits_to_keep"] = 1
        token_ids = token_ids.to(self.device)
        outputs = self.model(input_ids=token_ids.unsqueeze(0), **kwargs)
        self.length += int(token_ids.shape[0])
        logits = outputs.logits[0]
        return logits[-1:] if last_only else logits

    def truncate(self, length: int) -> None:
        """Roll the cache back so that only the first ``length`` tokens remain."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        if length < self.length and self._cache is not None:
            self._cache.crop(length - self.length)  # transformers 5.x: a negative count removes tokens
        self.length = length


def _num_layers(config) -> int | None:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _LayerCapture:
    """Forward hooks that record chosen hidden states (HF ``output_hidden_states`` numbering).

    Id ``i < num_layers`` is the input of decoder layer ``i`` (a pre-hook on that layer); id
    ``num_layers`` is the output of the module that runs the layers, the final normed hidden state. Only the named
    layers are hooked, so the forward computes nothing extra; the hooks keep references, no copies.
    """

    def __init__(self, model: PreTrainedModel, layers: tuple[int, ...]) -> None:
        decoder_layers, base, count = self.check(model, layers)
        self.layers = layers
        self._seen: dict[int, torch.Tensor] = {}
        self._handles = []
        for index in sorted(set(layers)):
            if index < count:
                hook = self._pre_hook(index)
                self._handles.append(decoder_layers[index].register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(base.register_forward_hook(self._output_hook(index)))

    @staticmethod
    def check(model: PreTrainedModel, layers: tuple[int, ...]):
        name = type(model).__name__
        count = _num_layers(text_config(model))
        base = getattr(model, "base_model", None)
        # the decoder layers, and the module that runs them (its output is the final normed hidden state)
        found = [
            (child, parent)
            for parent in (base.modules() if base is not None and base is not model else ())
            for child in parent.children()
            if isinstance(child, torch.nn.ModuleList) and len(child) == count
        ]
        if count is None or len(found) != 1:
            raise UnsupportedModelError(
                f"cannot find {name}'s decoder layers to read hidden states from; a hidden-state drafter needs them"
            )
        bad = [i for i in layers if not 0 <= i <= count]
        if bad:
            raise UnsupportedModelError(f"layer ids {bad} are outside {name}'s 0..{count} ({count} decoder layers)")
        return found[0][0], found[0][1], count

    def _pre_hook(self, index: int):
        def hook(module, args, kwargs):
            self._seen[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _output_hook(self, index: int):
        def hook(module, args, output):
            self._seen[index] = output[0] if isinstance(output, tuple) else output.last_hidden_state

        return hook

    def stacked(self, row: int = 0) -> torch.Tensor:
        missing = [i for i in self.layers if i not in self._seen]
        if missing:
            raise RuntimeError(f"layers {missing} were not seen in the last forward")
        return torch.stack([self._seen[i][row] for i in self.layers], dim=1)  # [n, layers, hidden]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._seen = {}
