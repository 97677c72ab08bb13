"""Reading and writing EAGLE heads: the EAGLE/SpecForge native format, ``speculators`` and EAGLE-1.

Every format is a folder with ``config.json`` and weights (``*.safetensors`` or ``pytorch_model.bin``):

EAGLE-3 native (EAGLE, SpecForge)
    ``architectures: ["LlamaForCausalLMEagle3"]`` with Llama fields (``hidden_size``,
    ``num_attention_heads``, ...), ``vocab_size`` (the target's), ``draft_vocab_size``, optional
    ``target_hidden_size``, ``norm_before_residual`` and
    ``eagle_config.eagle_aux_hidden_state_layer_ids``. Weights ``midlayer.*`` or ``layers.0.*``,
    ``fc.weight`` [H, 3 * H_target], ``norm.weight``, ``lm_head.weight`` [draft_vocab, H], ``d2t``
    [draft_vocab] int64 (``target_id = draft_id + d2t[draft_id]``), optional ``t2d`` and
    ``embed_tokens.weight`` (otherwise the target's embeddings are used).
``speculators`` (vLLM's format)
    ``speculators_model_type: "eagle3"``, the layer's fields in ``transformer_layer_config``,
    ``draft_vocab_size``, ``norm_before_residual``, ``target_hidden_size``, ``speculators_config``
    (algorithm, proposal methods, verifier); the same weights with the ``layers.0.`` prefix.
EAGLE-1
    A Llama ``config.json``; weights ``fc.weight`` [H, 2H] (and ``fc.bias``), ``layers.0.*``;
    the target's LM head and (unless saved) its embeddings. It reads the target's last hidden state.

Layer ids follow HF ``output_hidden_states``: id ``i < num_layers`` is the input of decoder layer
``i`` (0 = the embeddings); id ``num_layers`` is the final, normed hidden state.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel

from specdec import InvalidArgumentError, ModelLoadError

from .head import EagleHead, EagleHeadConfig
from .vocab import check_d2t

__all__ = [
    "HeadFormatError", "HeadMismatchError", "load_head", "save_speculators", "detect_format", "is_head_folder",
    "FORMATS",
]

FORMATS = ("eagle3", "speculators", "eagle1")


class HeadFormatError(ModelLoadError):
    """A head folder is missing, corrupt, partial, or in a format specdec does not read."""


class HeadMismatchError(InvalidArgumentError):
    """A head was made for another target (hidden size, vocabulary or layers differ)."""


def _target_text_config(target: PreTrainedModel):
    config = target.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def target_shape(target: PreTrainedModel) -> tuple[int, int, int]:
    """``(hidden_size, vocab_size, num_layers)`` of a target model."""
    text = _target_text_config(target)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    vocab = int(cast(torch.Tensor, target.get_input_embeddings().weight).shape[0])
    if not hidden or not layers:
        raise HeadMismatchError(f"cannot read the hidden size and layer count of {type(target).__name__}")
    return int(hidden), vocab, int(layers)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The low, middle and high layers vLLM and SpecForge read when a config names none."""
    return (2, num_layers // 2, num_layers - 3)


def _read_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise HeadFormatError(f"{folder} is not a folder: a head is a folder with config.json and weights")
    if not path.is_file():
        raise HeadFormatError(f"{folder} has no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise HeadFormatError(f"{path} must hold a JSON object")
    return config


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    try:
        if files:
            from safetensors.torch import load_file

            weights: dict[str, torch.Tensor] = {}
            for file in files:
                weights.update(load_file(str(file)))
            return weights
        bin_file = folder / "pytorch_model.bin"
        if bin_file.is_file():
            return dict(torch.load(bin_file, map_location="cpu", weights_only=True))
    except Exception as exc:  # safetensors and torch raise various errors for truncated files
        raise HeadFormatError(f"cannot read the weights in {folder}: {exc}") from exc
    raise HeadFormatError(f"{folder} has no weights (model.safetensors or pytorch_model.bin)")


def detect_format(config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> str:
    """``"speculators"``, ``"eagle3"`` or ``"eagle1"``; :class:`HeadFormatError` for anything else."""
    kind = config.get("speculators_model_type")
    if kind is not None:
        if kind != "eagle3":
            raise HeadFormatError(f"speculators_model_type {kind!r} is not supported (only 'eagle3')")
        return "speculators"
    architectures = config.get("architectures") or []
    if any("eagle3" in str(name).lower() for name in architectures):
        return "eagle3"
    fc = (weights or {}).get("fc.weight")
    if fc is not None and fc.dim() == 2 and fc.shape[1] == 2 * fc.shape[0]:
        return "eagle1"
    raise HeadFormatError(
        f"unknown head format (architectures={architectures}): expected a speculators eagle3 config, "
        "architectures naming an Eagle3 model, or an EAGLE-1 head (fc.weight of shape [H, 2H])"
    )


def _int(config: dict[str, Any], key: str, where: str, default: Any = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HeadFormatError(f"{where} needs an integer {key!r}, got {value!r}")
    return value


def _head_config(fmt: str, config: dict[str, Any], target: PreTrainedModel) -> EagleHeadConfig:
    target_hidden, target_vocab, target_layers = target_shape(target)
    layer = config.get("transformer_layer_config", {}) if fmt == "speculators" else config
    if not isinstance(layer, dict):
        raise HeadFormatError("transformer_layer_config must be a JSON object")
    where = "transformer_layer_config" if fmt == "speculators" else "config.json"
    hidden = _int(layer, "hidden_size", where)
    heads = _int(layer, "num_attention_heads", where)
    rope: dict[str, Any] = layer.get("rope_parameters") or {}
    theta: Any = rope.get("rope_theta", layer.get("rope_theta", 10000.0))
    if fmt == "eagle1":
        ids: tuple[int, ...] = (target_layers,)
    else:
        ids_raw = config.get("eagle_aux_hidden_state_layer_ids")
        if ids_raw is None:
            ids_raw = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        ids = tuple(ids_raw) if ids_raw is not None else default_layers(target_layers)
    vocab = _int(layer, "vocab_size", where, target_vocab if fmt == "speculators" else None)
    return EagleHeadConfig(
        kind="eagle1" if fmt == "eagle1" else "eagle3",
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=_int(layer, "num_key_value_heads", where, heads),
        head_dim=_int(layer, "head_dim", where, hidden // heads),
        intermediate_size=_int(layer, "intermediate_size", where),
        vocab_size=vocab,
        draft_vocab_size=_int(config, "draft_vocab_size", "config.json", vocab) if fmt != "eagle1" else vocab,
        target_hidden_size=config.get("target_hidden_size") or hidden,
        target_layers=ids,
        rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        hidden_act=str(layer.get("hidden_act", "silu")),
        norm_before_residual=bool(config.get("norm_before_residual", False)),
        max_position_embeddings=int(layer.get("max_position_embeddings", 4096)),
    )


def check_fits(config: EagleHeadConfig, target: PreTrainedModel) -> None:
    """Raise :class:`HeadMismatchError` naming every way the head does not fit the target."""
    target_hidden, target_vocab, target_layers = target_shape(target)
    problems = []
    if config.target_hidden_size != target_hidden:
        problems.append(
            f"the head reads hidden states of size {config.target_hidden_size}, the target's are {target_hidden}"
        )
    if config.vocab_size != target_vocab:
        problems.append(f"the head's vocabulary has {config.vocab_size} tokens, the target's {target_vocab}")
    bad = [i for i in config.target_layers if not 0 <= i <= target_layers]
    if bad:
        problems.append(f"layer ids {bad} are outside the target's 0..{target_layers} ({target_layers} layers)")
    if problems:
        raise HeadMismatchError("the head does not fit this target: " + "; ".join(problems))


def _rename(key: str) -> str:
    return "layers.0." + key[len("midlayer."):] if key.startswith("midlayer.") else key


_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "t2d")


def load_head(path: str | Path, target: PreTrainedModel, *, dtype: torch.dtype | None = None) -> EagleHead:
    """Load a head folder in any of :data:`FORMATS` for ``target``, checked against it.

    Embeddings (and an EAGLE-1 head's LM head) the checkpoint lacks are the target's own tensors.
    Raises :class:`HeadFormatError` (unreadable, partial, unknown format) or
    :class:`HeadMismatchError` (made for another target) before building anything large.
    """
    folder = Path(path)
    raw_config = _read_json(folder)
    weights = {_rename(k): v for k, v in _read_weights(folder).items() if not k.endswith(_IGNORED_SUFFIXES)}
    fmt = detect_format(raw_config, weights)
    try:
        config = _head_config(fmt, raw_config, target)
    except InvalidArgumentError as exc:
        raise HeadFormatError(f"{folder}/config.json describes an invalid head: {exc}") from exc
    if config.kind == "eagle1" and "fc.bias" in weights:
        config = replace(config, fc_bias=True)
    check_fits(config, target)
    dtype = dtype or cast(torch.Tensor, target.get_input_embeddings().weight).dtype
    device = cast(torch.Tensor, target.get_input_embeddings().weight).device
    with torch.device("meta"):
        head = EagleHead(config)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    target_embed = cast(torch.Tensor, target.get_input_embeddings().weight)
    borrowed = {"embed_tokens.weight"} if target_embed.shape[1] == config.hidden_size else set()
    if config.kind == "eagle1":
        borrowed.add("lm_head.weight")
    if config.draft_vocab_size == config.vocab_size:
        borrowed.add("d2t")
    optional = borrowed | {"layers.0.input_layernorm.weight"} if config.kind == "eagle1" else borrowed
    missing = sorted(k for k in expected if k not in weights and k not in optional)
    unexpected = sorted(k for k in weights if k not in expected)
    wrong = sorted(
        f"{k} {tuple(weights[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in weights and tuple(weights[k].shape) != shape
    )
    if missing or unexpected or wrong:
        parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                 f"wrong shapes {wrong}" if wrong else ""]  # fmt: skip
        raise HeadFormatError(f"{folder} is not a complete {fmt} head: " + "; ".join(p for p in parts if p))
    if "d2t" in weights:
        try:
            check_d2t(weights["d2t"], config.vocab_size)
        except InvalidArgumentError as exc:
            raise HeadMismatchError(f"{folder}: {exc}") from exc
    head = EagleHead(config).to(device=device, dtype=dtype)
    state = {k: v.to(device=device, dtype=torch.long if k == "d2t" else dtype) for k, v in weights.items()}
    if "embed_tokens.weight" not in state:
        state["embed_tokens.weight"] = cast(torch.Tensor, target.get_input_embeddings().weight).detach()
    if config.kind == "eagle1" and "lm_head.weight" not in state:
        state["lm_head.weight"] = target.get_output_embeddings().weight.detach()
    head.load_state_dict(state, strict=False, assign=False)
    return head.eval().requires_grad_(False)


def save_speculators(
    head: EagleHead,
    path: str | Path,
    *,
    verifier: str,
    verifier_architectures: list[str] | tuple[str, ...] = (),
    num_draft_tokens: int = 4,
    save_embeddings: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an eagle3 head as a ``speculators`` folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    config = head.config
    if config.kind != "eagle3":
        raise InvalidArgumentError("only eagle3 heads can be saved in the speculators format")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in head.state_dict().items():
        if key == "embed_tokens.weight" and not save_embeddings:
            continue
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    state["t2d"] = torch.zeros(config.vocab_size, dtype=torch.bool)
    state["t2d"][head.target_ids.cpu()] = True
    save_file(state, str(folder / "model.safetensors"))
    layer = config.llama_config().to_dict()
    layer.pop("rope_parameters", None)
    layer.update(rope_theta=config.rope_theta, architectures=["LlamaForCausalLM"])
    doc = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.1.0",
        "draft_vocab_size": config.draft_vocab_size,
        "norm_before_residual": config.norm_before_residual,
        "target_hidden_size": config.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(config.target_layers),
        "transformer_layer_config": layer,
        "speculators_config": {
            "algorithm": "eagle3",
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": num_draft_tokens}],
            "verifier": {"name_or_path": verifier, "architectures": list(verifier_architectures)},
        },
    }
    (folder / "config.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return folder


def is_head_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder whose config.json (and weights' names) say it is an EAGLE head.

    Cheap: reads config.json and, for EAGLE-1 candidates, only the names and shapes in the weights' header.
    """
    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(config, dict):
        return False
    if config.get("speculators_model_type") is not None:
        return True
    if any("eagle" in str(name).lower() for name in config.get("architectures") or []):
        return True
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(files[0]), framework="pt") as handle:
            if "fc.weight" not in handle.keys() or any(k.startswith("model.") for k in handle.keys()):
                return False
            shape = handle.get_slice("fc.weight").get_shape()
    except Exception:  # an unreadable file is not a head; load_head would say why
        return False
    return len(shape) == 2 and shape[1] == 2 * shape[0]
