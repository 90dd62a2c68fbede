"""Where protection training starts: fresh weights, or a classifier the owner already has.

``--from`` takes a run folder of this project (protect / train-clean), a file (a state dict of
the configured architecture, with or without the ``net.`` prefix of the normalising wrapper, or a
TorchScript module whose parameters have those names), or ``torchvision:NAME`` (torchvision's
pretrained ImageNet weights, where they load; their ImageNet normalisation comes with them). A
head whose class count differs from the task's is left fresh.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from activedaemon.protect.checkpoint import load_classifier

TORCHVISION = "torchvision:"
IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def source_state(source: str) -> dict[str, torch.Tensor]:
    """The weights named by ``source`` as a state dict of a ``Normalized`` classifier."""
    if source.startswith(TORCHVISION):
        return _torchvision_state(source.removeprefix(TORCHVISION))
    path = Path(source)
    if path.is_dir():
        return load_classifier(path).state_dict()
    if not path.is_file():
        raise FileNotFoundError(f"--from {source}: no run folder or weights file there")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # still the way to read a TorchScript file
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--from {source}: neither a state dict nor TorchScript ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--from {source}: the file holds no state dict of tensors")
    if not any(k.startswith("net.") for k in state):  # a bare network: add the wrapper's prefix
        state = {f"net.{k}": v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code; torch.save archives only data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _torchvision_state(name: str) -> dict[str, torch.Tensor]:
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
        net = tvm.get_model(name, weights=weights)
    except Exception as e:  # offline: URLError inside; unknown name: ValueError
        raise ValueError(
            f"--from torchvision:{name}: torchvision could not load its pretrained weights "
            f"({type(e).__name__}: {e}); offline, put the file in the torch hub cache "
            "(~/.cache/torch/hub/checkpoints) or pass a state dict file"
        ) from e
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    for key, values in IMAGENET_NORM.items():
        state[key] = torch.tensor(values).view(1, -1, 1, 1)
    return state


def load_start(model: nn.Module, source: str) -> dict:
    """Load ``source``'s weights into ``model`` (a ``Normalized`` classifier); every weight must
    fit except a classifier head of another class count. Returns what the card records."""
    state = source_state(source)
    own = model.state_dict()
    fresh = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not _is_head(model, k) for k in fresh):
        bad = [k for k in fresh if not _is_head(model, k)]
        raise ValueError(f"--from {source}: weights of another architecture ({bad[:3]} ...)")
    usable = {k: v for k, v in state.items() if k in own and k not in fresh}
    missing = [k for k in own if k not in usable and k not in ("mean", "std")]
    missing = [k for k in missing if not _is_head(model, k)]
    unused = [k for k in state if k not in own]
    if missing or unused:
        raise ValueError(
            f"--from {source}: the weights do not fit the configured architecture "
            f"(missing {missing[:3]}, unexpected {unused[:3]}); set --arch to theirs"
        )
    model.load_state_dict(usable, strict=False)
    record = {"from": source, "fresh_head": bool(fresh)}
    if Path(source).is_file():
        record["from_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return record


def _is_head(model: nn.Module, key: str) -> bool:
    """Whether ``key`` belongs to the network's last child (its classifier head)."""
    net = getattr(model, "net", model)
    last = list(net.named_children())[-1][0]
    return key.startswith(f"net.{last}.")
