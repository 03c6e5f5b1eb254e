"""Model loading: every format round-trips, untrusted pickles never run."""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from leakaudit.errors import ModelError, UnsafeModelError
from leakaudit.model.target import TargetModel, detect_format, load_model

from .conftest import TinyReference

ARCH_SOURCE = """
from leakaudit.zoo import ReferenceSpec, build_classifier

def make():
    spec = ReferenceSpec(train_per_class=3, holdout_per_class=4, arch="mlp", hidden=64)
    return build_classifier(spec, in_channels=1, num_classes=10)

def wrong_width():
    spec = ReferenceSpec(train_per_class=3, holdout_per_class=4, arch="mlp", hidden=32)
    return build_classifier(spec, in_channels=1, num_classes=10)
"""


@pytest.fixture()
def arch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's working directory holding the architecture module."""
    (tmp_path / "usernet.py").write_text(ARCH_SOURCE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sample() -> torch.Tensor:
    return torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _check_faithful(target: TargetModel, module: torch.nn.Sequential) -> None:
    x = _sample()
    with torch.no_grad():
        expected = module(x)
        probe = target.probe(x)
        penultimate = module[:-1](x)
    assert target.input_shape == (1, 32, 32)
    assert target.num_classes == 10
    torch.testing.assert_close(probe.logits, expected, rtol=1e-5, atol=1e-5)
    assert probe.features is not None, target.feature_note
    torch.testing.assert_close(probe.features, penultimate, rtol=1e-5, atol=1e-5)


def test_torchscript_round_trip(tiny: TinyReference) -> None:
    target = load_model(tiny.torchscript, shape_hint=(1, 32, 32), device="cpu")
    assert target.format == "torchscript"
    assert len(target.sha256) == 64
    _check_faithful(target, tiny.module)


def test_state_dict_with_arch_round_trip(tiny: TinyReference, arch_dir: Path) -> None:
    target = load_model(tiny.state_dict, arch="usernet:make", shape_hint=(1, 32, 32), device="cpu")
    assert target.format == "state_dict"
    _check_faithful(target, tiny.module)


def test_safetensors_with_arch_round_trip(tiny: TinyReference, arch_dir: Path) -> None:
    path = arch_dir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.module.state_dict().items()}, str(path))
    target = load_model(path, arch="usernet:make", shape_hint=(1, 32, 32), device="cpu")
    assert target.format == "safetensors"
    _check_faithful(target, tiny.module)


def test_exported_program_round_trip(tiny: TinyReference, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    program = torch.export.export(tiny.module, (torch.zeros(4, 1, 32, 32),))
    torch.export.save(program, str(path))
    target = load_model(path, device="cpu")
    assert target.format == "export"
    _check_faithful(target, tiny.module)  # a static batch of 4 still serves a batch of 6


def test_pickled_module_needs_the_flag(tiny: TinyReference, tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(tiny.module, path)
    with pytest.raises(UnsafeModelError, match="--unsafe-pickle"):
        load_model(path, shape_hint=(1, 32, 32), device="cpu")
    target = load_model(path, unsafe_pickle=True, shape_hint=(1, 32, 32), device="cpu")
    assert target.format == "pickle"
    _check_faithful(target, tiny.module)


def test_batchnorm_statistics_are_reachable(tmp_path: Path) -> None:
    from leakaudit.zoo import ReferenceSpec, build_classifier

    module = build_classifier(ReferenceSpec(arch="cnn-bn"), 1, 10).eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "bn.pt"))
    target = load_model(tmp_path / "bn.pt", shape_hint=(1, 32, 32), device="cpu")
    probe = target.probe(_sample())
    assert len(probe.bn_stats) == 2
    batch_mean, batch_var, running_mean, running_var = probe.bn_stats[0]
    assert batch_mean.shape == running_mean.shape == (32,)


def test_a_resnet18_reference_builds_and_its_torchscript_file_is_tapped(tmp_path: Path) -> None:
    """torchvision's ResNet-18 is no chain of its children: features and BN statistics come from its graph."""
    from dataclasses import replace

    from leakaudit.zoo import ReferenceSpec, build_classifier, build_reference, initial_classifier

    spec = ReferenceSpec(name="t-resnet18", dataset="digits", train_per_class=2, holdout_per_class=2,
                         arch="resnet18", epochs=1, batch_size=20)
    built = build_reference(spec, tmp_path / "ref")
    target = load_model(built.model_path, shape_hint=(1, 32, 32), device="cpu")
    assert target.format == "torchscript" and target.input_shape == (1, 32, 32) and target.num_classes == 10
    assert target.has_features, target.feature_note
    probe = target.probe(_sample())
    assert probe.features is not None and probe.features.shape == (6, 512)  # the input of the last linear layer
    scripted = torch.jit.load(str(built.model_path))
    torch.testing.assert_close(probe.logits, probe.features @ scripted.fc.weight.T + scripted.fc.bias,
                               rtol=1e-4, atol=1e-4)
    assert len(probe.bn_stats) == 20  # stem, 8 blocks × 2, 3 downsampling shortcuts
    assert probe.bn_stats[0][0].shape == (64,)
    initial = initial_classifier(spec, 1, 10)
    assert initial.conv1.in_channels == 1
    assert torch.load(built.init_path)["conv1.weight"].equal(initial.conv1.weight)
    torch.manual_seed(spec.seed)
    small = build_classifier(replace(spec, init_scale=0.1), 1, 10)
    for (name, p), q in zip(small.named_parameters(), initial.parameters()):
        torch.testing.assert_close(p, 0.1 * q, msg=name)


class _Payload:
    """Unpickling this creates a file: the proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_files(tmp_path: Path, tiny: TinyReference, marker: Path) -> dict[str, Path]:
    files = {}
    bare = tmp_path / "bare.pt"
    torch.save(_Payload(marker), bare)
    files["bare"] = bare
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": tiny.module.state_dict(), "extra": _Payload(marker)}, checkpoint)
    files["checkpoint"] = checkpoint
    # A genuine state_dict archive whose data.pkl is swapped for a payload.
    archive = tmp_path / "archive.pth"
    with zipfile.ZipFile(tiny.state_dict) as src, zipfile.ZipFile(archive, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(_Payload(marker), protocol=2)
            dst.writestr(item, data)
    files["zip data.pkl"] = archive
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    files["plain pickle"] = legacy
    return files


def test_malicious_pickles_are_refused_and_never_run(tiny: TinyReference, tmp_path: Path, arch_dir: Path) -> None:
    marker = tmp_path / "pwned"
    for where, path in _malicious_files(tmp_path, tiny, marker).items():
        with pytest.raises(UnsafeModelError, match="--unsafe-pickle"):
            load_model(path, arch="usernet:make", shape_hint=(1, 32, 32), device="cpu")
        assert not marker.exists(), f"code ran while loading the {where} file"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is not a model\n", "not a model file"),
        (b"PK\x03\x04garbage", "not a model file|corrupt|not a PyTorch"),
    ],
)
def test_unreadable_model_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path, shape_hint=(1, 32, 32), device="cpu")


def test_truncated_torchscript(tiny: TinyReference, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pt"
    path.write_bytes(tiny.torchscript.read_bytes()[:2000])
    with pytest.raises(ModelError):
        load_model(path, shape_hint=(1, 32, 32), device="cpu")


def test_truncated_state_dict(tiny: TinyReference, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    data = tiny.state_dict.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt|not a model file"):
        load_model(path, shape_hint=(1, 32, 32), device="cpu")


def test_state_dict_without_arch(tiny: TinyReference) -> None:
    with pytest.raises(ModelError, match="--arch"):
        load_model(tiny.state_dict, shape_hint=(1, 32, 32), device="cpu")


def test_arch_that_does_not_import(tiny: TinyReference, arch_dir: Path) -> None:
    with pytest.raises(ModelError, match="cannot import 'nosuchmodule'"):
        load_model(tiny.state_dict, arch="nosuchmodule:make", device="cpu")
    with pytest.raises(ModelError, match="has no attribute 'nothing'"):
        load_model(tiny.state_dict, arch="usernet:nothing", device="cpu")
    with pytest.raises(ModelError, match="module.path:callable"):
        load_model(tiny.state_dict, arch="usernet", device="cpu")


def test_arch_whose_weights_do_not_fit(tiny: TinyReference, arch_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"shape mismatch .*1\.weight \(64, 1024\) vs \(32, 1024\)"):
        load_model(tiny.state_dict, arch="usernet:wrong_width", shape_hint=(1, 32, 32), device="cpu")


def test_format_is_detected_from_content_not_name(tiny: TinyReference, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny.torchscript.read_bytes())
    assert detect_format(renamed) == "torchscript"
    assert detect_format(tiny.state_dict) == "state_dict"


def test_normalisation_is_applied_inside(tiny: TinyReference) -> None:
    target = load_model(tiny.torchscript, shape_hint=(1, 32, 32), mean=[0.5], std=[0.25], device="cpu")
    x = _sample()
    with torch.no_grad():
        torch.testing.assert_close(target.logits(x), tiny.module((x - 0.5) / 0.25), rtol=1e-5, atol=1e-5)


def test_input_shape_without_any_hint(tiny: TinyReference, tmp_path: Path) -> None:
    # An MLP's first layer fixes C·H·W: 1024 inputs read as one 32×32 gray image.
    assert load_model(tiny.torchscript, device="cpu").input_shape == (1, 32, 32)
    # A CNN says only its channels: the size must come from the data or --input-size.
    from leakaudit.zoo import ReferenceSpec, build_classifier

    cnn = build_classifier(ReferenceSpec(arch="cnn"), 1, 10).eval()
    torch.jit.save(torch.jit.script(cnn), str(tmp_path / "cnn.pt"))
    with pytest.raises(ModelError, match="--input-size"):
        load_model(tmp_path / "cnn.pt", device="cpu")
    assert load_model(tmp_path / "cnn.pt", input_size=(32, 32), device="cpu").input_shape == (1, 32, 32)


def test_from_module_keeps_weights_frozen(tiny: TinyReference) -> None:
    target = TargetModel.from_module(copy.deepcopy(tiny.module), (1, 32, 32), device="cpu")
    assert all(not p.requires_grad for p in target.parameters())
    assert os.environ["TORCH_HOME"].endswith(".torch-home-empty")


def test_the_vetted_pt2_layout_is_the_installed_torch_one(tiny: TinyReference, tmp_path: Path) -> None:
    """A PyTorch that writes another archive version makes this fail: its files are refused until vetted."""
    from torch.export.pt2_archive import constants

    from leakaudit.loading.pt2 import VETTED_VERSIONS, check_archive

    assert VETTED_VERSIONS["archive_version"] == {constants.ARCHIVE_VERSION_VALUE}
    assert VETTED_VERSIONS["archive_format"] == {constants.ARCHIVE_FORMAT_VALUE}
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(tiny.module, (torch.zeros(4, 1, 32, 32),)), str(path))
    check_archive(path)  # what this torch writes passes the check


def test_a_state_dict_with_hostile_keys_is_reported_escaped(tiny: TinyReference, arch_dir: Path,
                                                            tmp_path: Path) -> None:
    state = dict(tiny.module.state_dict())
    state["\x1b]0;title\x07"] = torch.zeros(1)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"unexpected keys: \\x1b\]0;title\\x07") as info:
        load_model(path, arch="usernet:make", shape_hint=(1, 32, 32), device="cpu")
    assert "\x1b" not in str(info.value)


def test_exported_program_with_a_dynamic_batch_loads(tiny: TinyReference, tmp_path: Path) -> None:
    """Its shape expressions (``Symbol('s…', positive=True, …)``) pass the check that refuses code in them."""
    path = tmp_path / "dynamic.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(tiny.module, (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    target = load_model(path, device="cpu")
    _check_faithful(target, tiny.module)


@pytest.mark.parametrize(
    ("operator", "problem"),
    [
        ("aten::conv2d", None),
        ("aten::linear", None),
        ("prim::If", None),
        ("aten::from_file", "maps a file"),
        ("aten::save", "writes a file"),
        ("aten::set_", "Storage"),
        ("prim::Print", "prints"),
        ("c10d::allreduce_", "namespace 'c10d'"),
        ("mylib::anything", "namespace 'mylib'"),
    ],
)
def test_operator_policy(operator: str, problem: str | None) -> None:
    from leakaudit.loading.ops import op_problem

    found = op_problem(operator)
    assert (found is None) if problem is None else (found is not None and problem in found), found
