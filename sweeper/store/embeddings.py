"""Learned embeddings on disk: write the diffusers and A1111/ComfyUI files, read every known format safely.

Written by a run (see ARCHITECTURE.md):
    learned_embeds.safetensors        {placeholder: [k, dim]}   diffusers; SDXL: first encoder (clip_l)
    learned_embeds_2.safetensors      {placeholder: [k, dim]}   SDXL only: second encoder (clip_g)
    learned_embeds_a1111.safetensors  {"emb_params": [k, dim]}  (SDXL: {"clip_l": ..., "clip_g": ...})
    per_image_embeds.safetensors      {token: [1, dim]}         per-image tokens (SDXL: + per_image_embeds_2)

Read: diffusers .safetensors/.bin ({token: tensor}), A1111/ComfyUI .pt (string_to_param["*"], name) and
.safetensors (emb_params; clip_l/clip_g), the official textual_inversion code's embeddings_gs-N.pt
(string_to_token + string_to_param as an nn.ParameterDict), a raw tensor, or a run folder. Pickle-based files
go only through torch's weights-only unpickler, whose allow-list (tensors, Parameters, plain containers, set)
gets exactly one class more, nn.ParameterDict, for the official format: a file that would run code is refused.

Refused when read, before any model work, each naming the file: a tensor larger than any embedding (wider than
MAX_WIDTH, or more than MAX_ELEMENTS values in the file), from the header alone (safetensors' header, a torch
zip archive memory-mapped, a legacy pickle's file size) so a file that claims gigabytes costs none; non-finite
values (NaN/inf), and, through
`check_fits_model`, a width that is not the model's text encoder's (read from the model's config.json or its
single file's header, no weights).
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweeper.models import resolve_model, single_file_shapes
from sweeper.store import atomic

# Lazy imports: safetensors and huggingface_hub are imported where used (CLI start-up, refusals before model work).

DIFFUSERS_FILE = "learned_embeds.safetensors"
DIFFUSERS_FILE_2 = "learned_embeds_2.safetensors"
A1111_FILE = "learned_embeds_a1111.safetensors"
PER_IMAGE_FILE = "per_image_embeds.safetensors"
PER_IMAGE_FILE_2 = "per_image_embeds_2.safetensors"
DEFAULT_TOKEN = "<concept>"
SDXL_KEYS = ("clip_l", "clip_g")
# globals a tensor pickle legitimately names; anything else is code we refuse
SAFE_MODULES = ("torch", "collections", "_codecs")
SAFE_BUILTINS = (
    "__builtin__.set",
    "builtins.set",
)  # a Module's state holds a set (protocol 2 spells it __builtin__)
# The one class the official textual_inversion code's files need beyond torch's weights-only allow-list:
# EmbeddingManager.save() pickles string_to_param as an nn.ParameterDict, a Module whose state is plain
# containers and Parameters (Module.__setstate__ only updates __dict__; it runs nothing from the file).
OFFICIAL_FORMAT_GLOBALS = (torch.nn.ParameterDict,)
# No text encoder is wider than MAX_WIDTH (SD 1.x 768, SD 2.x 1024, SDXL 1280; T5-XXL 4096), and no embedding
# file (per-image tokens included) holds more than MAX_ELEMENTS values: a larger claim is refused before its
# data is read, so memory stays bounded whatever a header says.
MAX_WIDTH = 8192
MAX_ELEMENTS = 2**24


class EmbeddingFormatError(ValueError):
    """An embedding file that is missing, unreadable, or in no layout we know."""


class UnsafeEmbeddingError(EmbeddingFormatError):
    """A pickle-based embedding file that would execute code when loaded."""


@dataclass
class LoadedEmbedding:
    placeholder: str | None
    vectors: list[torch.Tensor]  # one [k, dim] tensor per text encoder (SD 1/2: one; SDXL: clip_l, clip_g)
    source: str | None = None  # the file or run folder it was read from, for messages

    @property
    def num_vectors(self) -> int:
        return self.vectors[0].shape[0]


# ---------------------------------------------------------------------------------------------- write


def _require_embedding_sized(shapes: dict[str, list[int]], path: Path | str) -> None:
    """Refuse, from shapes alone, tensors no embedding has (see MAX_WIDTH, MAX_ELEMENTS)."""
    total = 0
    for key, shape in shapes.items():
        numel = 1
        for size in shape:
            numel *= int(size)
        total += numel
        if (shape and int(shape[-1]) > MAX_WIDTH) or total > MAX_ELEMENTS:
            raise EmbeddingFormatError(
                f"{path}: tensor {key!r} claims shape {list(shape)}, larger than any embedding (vectors of width "
                f"<= {MAX_WIDTH}, <= {MAX_ELEMENTS} values in a file); not an embedding file, refused before "
                "reading its data"
            )


def _as_matrix(t: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(t).__name__}")
    _require_embedding_sized({"tensor": list(t.shape)}, what)  # before the copy below touches its data
    t = t.detach()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"{what}: expected shape [k, dim], got {tuple(t.shape)}")
    # clone: a row slice of an embedding matrix would otherwise drag its whole storage along
    return t.to("cpu").clone().contiguous()


def save_learned_embeds(
    run_dir: Path,
    placeholder: str,
    vectors: list[torch.Tensor],
    per_image: dict[str, list[torch.Tensor]] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write the run's embedding files atomically; return {kind: path}.

    kinds: "diffusers", "diffusers_2" (SDXL), "a1111", "per_image" and "per_image_2" (SDXL) when given.
    """
    run_dir = Path(run_dir)
    if not placeholder:
        raise ValueError("placeholder must be a non-empty string")
    if not 1 <= len(vectors) <= 2:
        raise ValueError(f"vectors: expected one tensor per text encoder (1 or 2), got {len(vectors)}")
    mats = [_as_matrix(v, f"vectors[{i}]") for i, v in enumerate(vectors)]
    if len({m.shape[0] for m in mats}) != 1:
        raise ValueError(
            f"vectors: every encoder needs the same number of vectors, got {[m.shape[0] for m in mats]}"
        )
    meta = {"placeholder": placeholder, "num_vectors": str(mats[0].shape[0]), "num_encoders": str(len(mats))}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})

    paths = {"diffusers": atomic.save_safetensors({placeholder: mats[0]}, run_dir / DIFFUSERS_FILE, meta)}
    if len(mats) == 2:
        paths["diffusers_2"] = atomic.save_safetensors(
            {placeholder: mats[1]}, run_dir / DIFFUSERS_FILE_2, meta
        )
        a1111 = dict(zip(SDXL_KEYS, mats))
    else:
        a1111 = {"emb_params": mats[0]}
    paths["a1111"] = atomic.save_safetensors(a1111, run_dir / A1111_FILE, meta)

    if per_image:
        per_encoder: list[dict[str, torch.Tensor]] = [{} for _ in mats]
        for token, vecs in per_image.items():
            if len(vecs) != len(mats):
                raise ValueError(f"per_image[{token!r}]: expected {len(mats)} tensor(s), one per encoder")
            for i, v in enumerate(vecs):
                per_encoder[i][token] = _as_matrix(v, f"per_image[{token!r}][{i}]")
        paths["per_image"] = atomic.save_safetensors(per_encoder[0], run_dir / PER_IMAGE_FILE, meta)
        if len(mats) == 2:
            paths["per_image_2"] = atomic.save_safetensors(per_encoder[1], run_dir / PER_IMAGE_FILE_2, meta)
    return paths


# ----------------------------------------------------------------------------------------------- read


def _torch_load_safe(path: Path) -> object:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(OFFICIAL_FORMAT_GLOBALS)):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # a zip archive is memory-mapped: a tensor's data is read only once its size was accepted
            # (_as_matrix); a legacy pickle holds its data inline, so its file size bounds what it costs
            if zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if path.stat().st_size > 8 * MAX_ELEMENTS:
                raise EmbeddingFormatError(
                    f"{path}: {path.stat().st_size} bytes, larger than any embedding file "
                    f"(<= {MAX_ELEMENTS} values); refused before reading it"
                )
            return torch.load(path, map_location="cpu", weights_only=True)
    except EmbeddingFormatError:
        raise
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg:
            raise EmbeddingFormatError(
                f"{path}: not a readable torch/pickle file ({msg.splitlines()[0]})"
            ) from e
        # The safe unpickler stopped; tell "imports code" apart from "a pickle feature it lacks" by reading
        # the opcodes statically (nothing is executed either way).
        refused = re.findall(r"Unsupported global: GLOBAL (\S+)", msg)
        code = sorted(
            g
            for g in set(refused) | set(_pickle_globals(path))
            if g.split(".")[0] not in SAFE_MODULES and g not in SAFE_BUILTINS
        )
        if code:
            raise UnsafeEmbeddingError(
                f"{path}: refused: this pickle file contains code (it imports {', '.join(code[:5])}), which "
                "loading would execute. Only tensors and plain containers (and the official code's ParameterDict) "
                "are accepted; convert it to .safetensors from a source you trust."
            ) from None
        reason = re.findall(r"WeightsUnpickler error: \s*(.+)", msg)
        raise EmbeddingFormatError(
            f"{path}: torch's safe loader cannot read it ({reason[0] if reason else 'unsupported pickle'}); "
            "re-save it with torch.save or as .safetensors"
        ) from None
    except Exception as e:  # zip/pickle garbage raises KeyError, RuntimeError, EOFError, ...
        raise EmbeddingFormatError(
            f"{path}: not a readable .safetensors or torch file ({type(e).__name__}: {e})"
        ) from e


def _pickle_globals(path: Path) -> list[str]:
    """The module.name globals a pickle (or torch zip archive) would import, read without executing it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            data = z.read(names[0]) if names else b""
    else:
        data = path.read_bytes()
    found, strings, last = [], [], None
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if "UNICODE" in op.name or "STRING" in op.name:
                last = arg
                strings.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = last
            elif op.name.endswith("PUT"):
                memo[arg] = last
            elif op.name.endswith("GET"):
                last = memo.get(arg)
                strings.append(last)
            elif op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            else:
                last = None
    except Exception:  # truncated or odd stream: keep what was read
        pass
    return found


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            _require_embedding_sized({k: f.get_slice(k).get_shape() for k in f.keys()}, path)
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except EmbeddingFormatError:
        raise
    except Exception as e:
        raise EmbeddingFormatError(
            f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})"
        ) from e


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"keys {sorted(map(str, obj.keys()))}"
    return f"a {type(obj).__name__}"


def _from_state(path: Path, obj: object, meta_name: str | None) -> LoadedEmbedding:
    """Recognise the layout of an already-loaded file."""
    if isinstance(obj, torch.Tensor):
        return LoadedEmbedding(meta_name, [_as_matrix(obj, str(path))])
    if not isinstance(obj, dict):
        raise EmbeddingFormatError(f"{path}: no embedding layout holds {_describe(obj)}")
    if "string_to_param" in obj:  # A1111 / ComfyUI .pt, and the official code's embeddings_gs-N.pt
        # the official code saves an nn.ParameterDict; read its _parameters (files from torch < 1.12 lack
        # the _keys that ParameterDict's own accessors need in newer torch)
        params = getattr(obj["string_to_param"], "_parameters", obj["string_to_param"])
        if not isinstance(params, dict) or not params:
            raise EmbeddingFormatError(
                f"{path}: A1111 file with an empty or odd string_to_param ({_describe(params)})"
            )
        tensor = params["*"] if "*" in params else next(iter(params.values()))
        name = obj.get("name")
        return LoadedEmbedding(name if isinstance(name, str) else meta_name, [_as_matrix(tensor, str(path))])
    if "emb_params" in obj:
        return LoadedEmbedding(meta_name, [_as_matrix(obj["emb_params"], str(path))])
    if all(k in obj for k in SDXL_KEYS):
        return LoadedEmbedding(meta_name, [_as_matrix(obj[k], f"{path}[{k}]") for k in SDXL_KEYS])
    if len(obj) == 1:  # diffusers: {token: [k, dim]}
        ((token, tensor),) = obj.items()
        if isinstance(tensor, torch.Tensor):
            return LoadedEmbedding(str(token), [_as_matrix(tensor, str(path))])
    raise EmbeddingFormatError(
        f"{path}: unknown embedding layout ({_describe(obj)}); expected {{token: tensor}} (diffusers), "
        "string_to_param (A1111 .pt), emb_params or clip_l/clip_g (A1111/ComfyUI .safetensors), or a tensor"
    )


def _load_run_folder(folder: Path) -> LoadedEmbedding:
    first = folder / DIFFUSERS_FILE
    if not first.is_file():
        raise EmbeddingFormatError(
            f"{folder}: a folder, but it has no {DIFFUSERS_FILE} (is it a finished run folder?)"
        )
    emb = load_embedding_file(first)
    second = folder / DIFFUSERS_FILE_2
    if second.is_file():
        emb.vectors += load_embedding_file(second).vectors
    emb.source = str(folder)
    return emb


def load_embedding_file(path: str | Path) -> LoadedEmbedding:
    """Read an embedding from any known layout (see module docstring); never executes code from the file.

    Raises EmbeddingFormatError (UnsafeEmbeddingError for code) naming the file for anything unusable,
    including NaN or infinite values."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_run_folder(path)
    if not path.is_file():
        raise EmbeddingFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    # safetensors starts with an 8-byte little-endian header length, then "{"; sniff rather than trust the suffix
    is_safetensors = path.suffix == ".safetensors" or (len(head) == 8 and _looks_like_safetensors(path, head))
    if is_safetensors:
        tensors, meta = _load_safetensors(path)
        emb = _from_state(path, tensors, meta.get("placeholder") or meta.get("name"))
    else:
        emb = _from_state(path, _torch_load_safe(path), None)
    emb.source = str(path)
    _require_finite(emb, path)
    return emb


def _require_finite(emb: LoadedEmbedding, path: Path) -> None:
    for i, vectors in enumerate(emb.vectors):
        finite = torch.isfinite(vectors.float())
        if not finite.all():
            bad_rows = (~finite).any(dim=-1).nonzero().flatten().tolist()
            where = f" (encoder {i + 1} of {len(emb.vectors)})" if len(emb.vectors) > 1 else ""
            raise EmbeddingFormatError(
                f"{path}: {int((~finite).sum())} of {finite.numel()} values are NaN or infinite, in vector(s) "
                f"{bad_rows}{where}; the training that wrote it diverged or the file is damaged: use an earlier "
                "checkpoint or retrain (e.g. with a lower inversion.lr)"
            )


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    n = int.from_bytes(head, "little")
    if not 2 <= n <= path.stat().st_size - 8:
        return False
    with open(path, "rb") as f:
        f.seek(8)
        return f.read(1) == b"{"


# ------------------------------------------------------------------------------------ model widths


def _fit_widths(embedding: LoadedEmbedding, dims: list[int], model: str) -> LoadedEmbedding:
    """The embedding's vector sets for text encoders of widths `dims`; EmbeddingFormatError if they differ."""
    got = [v.shape[-1] for v in embedding.vectors]
    if len(got) == 2 and len(dims) == 1 and got[1] in dims and got[0] not in dims:  # SDXL file, refiner-like
        return LoadedEmbedding(embedding.placeholder, embedding.vectors[1:], embedding.source)
    if got != dims:
        raise EmbeddingFormatError(
            f"{embedding.source or 'the embedding'}: holds {len(got)} vector set(s) of width {got}, but {model} "
            f"take {dims}; the embedding was trained for a different model family (text-encoder widths: "
            "SD 1.x 768, SD 2.x 1024, SDXL 768 + 1280): give the model it was trained with"
        )
    return embedding


def model_text_widths(pretrained: str, config: str | None = None) -> list[int] | None:
    """The text-encoder width(s) of a model, from its config.json files or its single file's header (no weights).

    None when they cannot be read without a download (a hub model not in the cache); loading checks again.
    Raises models.ModelLoadError for a model that cannot be used at all, as loading it would.
    """
    source = resolve_model(pretrained, config)
    if source.kind == "file":
        return _single_file_widths(single_file_shapes(source.pretrained))
    widths = []
    for sub in ["text_encoder", "text_encoder_2"] if source.is_sdxl else ["text_encoder"]:
        try:
            if source.kind == "folder":
                path = Path(source.pretrained) / sub / "config.json"
            else:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(source.pretrained, f"{sub}/config.json"))
            widths.append(int(json.loads(path.read_text())["hidden_size"]))
        except Exception:  # noqa: BLE001 - unreadable here; the pipeline's own loading reports it
            return None
    return widths


def _single_file_widths(shapes: dict[str, torch.Tensor]) -> list[int] | None:
    """Token-embedding widths of a single LDM checkpoint's text encoder(s), in encoder order (SDXL: 0, 1)."""
    found = {}
    for key, tensor in shapes.items():
        if not key.endswith("token_embedding.weight"):
            continue
        if key.startswith("cond_stage_model."):
            found[0] = tensor.shape[-1]
        elif key.startswith("conditioner.embedders."):
            found[int(key.split(".")[2])] = tensor.shape[-1]
    return [found[i] for i in sorted(found)] or None


def check_fits_model(embedding: LoadedEmbedding, pretrained: str, config: str | None = None) -> None:
    """Refuse an embedding whose width is not the model's, from the model's configs alone (before loading it)."""
    dims = model_text_widths(pretrained, config)
    if dims is not None:
        _fit_widths(embedding, dims, f"model.pretrained={pretrained}'s text encoder(s)")


# ---------------------------------------------------------------------------------------- pipelines


def _encoders(pipe) -> list[tuple[Any, torch.nn.Module]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
    pairs.append((getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)))
    return [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]


def load_into_pipeline(pipe, embedding: LoadedEmbedding | str | Path, token: str | None = None) -> str:
    """Register the embedding's token(s) on every text encoder of `pipe`; return the placeholder for prompts.

    Write the returned string once in a prompt: diffusers expands a multi-vector token "<t>" into
    "<t> <t>_1 ..." itself when the pipeline encodes the prompt.
    """
    if not isinstance(embedding, LoadedEmbedding):
        embedding = load_embedding_file(embedding)
    source = embedding.source or "the embedding"
    token = token or embedding.placeholder or DEFAULT_TOKEN
    pairs = _encoders(pipe)
    dims = [enc.get_input_embeddings().weight.shape[-1] for _, enc in pairs]
    embedding = _fit_widths(embedding, dims, "the pipeline's text encoder(s)")
    # diffusers refuses a taken token per encoder; check all first so SDXL is never left half-loaded
    for tokenizer, _ in pairs:
        taken = [t for t in (token, f"{token}_1") if t in tokenizer.get_vocab()]
        if taken:
            raise ValueError(
                f"{source}: token {taken[0]!r} is already in the pipeline's vocabulary; "
                "pass another token (e.g. token='<my-concept>')"
            )
    for (tokenizer, encoder), vectors in zip(pairs, embedding.vectors):
        pipe.load_textual_inversion({token: vectors}, token=token, tokenizer=tokenizer, text_encoder=encoder)
    return token
