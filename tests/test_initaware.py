"""The init-aware mode on bundled digits (no download): exact span, CLI flag, the Adam fallback, fine-tuned CNNs."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from leakaudit.cli.commands import main
from leakaudit.zoo import ReferenceSpec, build_reference

QUICK = """
[inversion]
width = 16
batch_per_class = 2
steps = 20
pool_per_class = 4
candidates_per_class = 2
refine_steps = 5
kkt_steps = 10
pretrain_steps = 20
"""


def gd_reference_spec(optimizer: str = "gd") -> ReferenceSpec:
    """2 digits per class, a 200-unit MLP trained full-batch: plain GD keeps its first layer's update exact."""
    return ReferenceSpec(name=f"gd-{optimizer}", dataset="digits", train_per_class=2, holdout_per_class=8,
                         arch="mlp", hidden=200, init_scale=0.1, optimizer=optimizer,
                         lr=0.5 if optimizer == "gd" else 1e-3, epochs=150, batch_size=20)


def _build(tmp_path_factory: pytest.TempPathFactory, optimizer: str):  # type: ignore[no-untyped-def]
    return build_reference(gd_reference_spec(optimizer), tmp_path_factory.mktemp(optimizer))


@pytest.fixture(scope="module")
def gd_reference(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return _build(tmp_path_factory, "gd")


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code), err.getvalue()


def test_initial_weights_are_saved_and_rebuild_the_training_start(gd_reference) -> None:
    from leakaudit.inversion.initaware import first_layer_update, load_initial_state, update_span
    from leakaudit.model.target import load_model

    target = load_model(gd_reference.model_path)
    state = load_initial_state(gd_reference.init_path)
    span, note = update_span(first_layer_update(target, state), target)
    assert span is not None, note
    assert span.update_rank == 20  # 2 digits × 10 classes, exactly
    assert "rank 20" in note


def test_a_units_bias_ratio_gives_back_the_member_that_alone_reached_it(gd_reference) -> None:
    from leakaudit.inversion.initaware import (first_layer_bias_update, first_layer_update, load_initial_state,
                                               unit_ratio_images)
    from leakaudit.matching.ssim import ssim_matrix
    from leakaudit.model.target import load_model
    from leakaudit.zoo import split_members

    target = load_model(gd_reference.model_path)
    state = load_initial_state(gd_reference.init_path)
    bias_delta = first_layer_bias_update(target, state)
    assert bias_delta is not None and bias_delta.shape == (200,)
    ratios = unit_ratio_images(first_layer_update(target, state), bias_delta, target)
    data = split_members(gd_reference_spec())
    members = ssim_matrix(ratios, data.train_images.float() / 255).max(0).values
    others = ssim_matrix(ratios, data.holdout_images.float() / 255).max(0).values
    # measured: 3 of 20 members come back exactly (SSIM 1.000), no non-member above 0.86
    assert int((members > 0.99).sum()) >= 1 and float(others.max()) < 0.99
    assert float(members.mean()) > float(others.mean())


def test_cli_init_flag_reports_the_stronger_threat_model(gd_reference, tmp_path: Path) -> None:
    import json

    config = tmp_path / "quick.toml"
    config.write_text(QUICK)
    out = tmp_path / "out"
    code, err = _run(["run", str(gd_reference.model_path), "--data", str(gd_reference.train_dir), "--holdout",
                      str(gd_reference.holdout_dir), "--init", str(gd_reference.init_path), "--out", str(out),
                      "--config", str(config), "--no-images"])
    assert code in (0, 1), err
    doc = json.loads((out / "leakaudit.json").read_text())
    assert doc["mode"] == "init-aware" and doc["threat_model"].startswith("Init-aware (stronger than informed)")
    assert any("rank 20" in n for n in doc["inversion"]["notes"])
    assert any("unit ratios" in n for n in doc["inversion"]["notes"])
    # 20 directions, and a public digit leaves hundreds of pixels dark: members are isolated extreme points
    assert any("members are isolated extreme points" in n for n in doc["inversion"]["notes"]), doc["inversion"]["notes"]
    # upsampled 8×8 digits are smooth and overlap, so few are exact extreme points (measured: 0.655 with 40
    # objectives); still the members are matched clearly better than non-members
    summary = doc["summary"]
    assert summary["leak_score"]["value"] > 0.6 and summary["leak_score"]["p_value"] < 0.05
    assert summary["train"]["mean"] > summary["holdout"]["mean"]
    # the positive control starts its copies from the same --init weights and attacks them init-aware too
    power = doc["power"]
    assert power["copy"] == "init" and power["recipe"]["start"] == "init", power
    assert power["status"] != "not measured" and power["rungs"], power


def _sparse_images(count: int, pixels: int, lit: int, seed: int) -> torch.Tensor:
    """(count, pixels) non-negative images, each lighting ``lit`` random pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, pixels)
    for row in images:
        row[torch.randperm(pixels, generator=generator)[:lit]] = 0.2 + 0.8 * torch.rand(lit, generator=generator)
    return images


@pytest.mark.parametrize(("members", "lit", "free", "isolated"), [(30, 10, 1, True), (80, 40, 20, False)])
def test_the_span_is_called_too_wide_when_a_face_shares_a_members_dark_pixels(members: int, lit: int, free: int,
                                                                              isolated: bool) -> None:
    from leakaudit.inversion.spanfaces import free_directions, span_faces

    images = _sparse_images(members, 100, lit, seed=1)
    basis = torch.linalg.qr(images.double().T)[0].T  # the span of the members, as the update gives it
    # a member's own direction always vanishes on its dark pixels; with 80 directions and 60 dark pixels,
    # 20 directions do, so the extreme-image programme cannot tell the member from its face
    assert free_directions(basis, images).tolist() == [free] * members
    faces = span_faces(basis, _sparse_images(40, 100, lit, seed=2))
    reached = int((images > 0).any(0).sum())  # the pixels some member lights
    assert faces is not None and faces.isolated is isolated and faces.rank == members and faces.reached == reached
    assert ("isolated extreme points" in faces.note()) is isolated
    assert ("too wide" in faces.note()) is not isolated
    assert span_faces(basis, None) is None


def test_without_public_images_the_rows_steer_the_span_and_its_faces_go_unmeasured(gd_reference) -> None:
    from leakaudit.inversion.initaware import invert_init_aware
    from leakaudit.matching.ssim import ssim_matrix
    from leakaudit.model.target import load_model
    from leakaudit.zoo import split_members

    run = invert_init_aware(load_model(gd_reference.model_path), gd_reference.init_path, None, limit=40)
    assert any("rows of the update" in n for n in run.notes), run.notes
    assert any("was not measured" in n for n in run.notes) and not any("isolated" in n for n in run.notes)
    data = split_members(gd_reference_spec())
    members = ssim_matrix(run.images, data.train_images.float() / 255).max(0).values
    others = ssim_matrix(run.images, data.holdout_images.float() / 255).max(0).values
    assert float(members.mean()) > float(others.mean())


def test_adam_has_no_span_and_the_ordinary_inversion_runs(tmp_path_factory: pytest.TempPathFactory,
                                                          tmp_path: Path) -> None:
    import json

    built = _build(tmp_path_factory, "adam")
    config = tmp_path / "quick.toml"
    config.write_text(QUICK)
    code, err = _run(["run", str(built.model_path), "--data", str(built.train_dir), "--holdout",
                      str(built.holdout_dir), "--init", str(built.init_path), "--out", str(tmp_path / "o"),
                      "--config", str(config), "--no-images"])
    assert code in (0, 1), err
    doc = json.loads((tmp_path / "o" / "leakaudit.json").read_text())
    assert doc["mode"] == "informed"
    assert any("Adam" in n for n in doc["inversion"]["notes"])
    # its control repeats the attack that ran, the ordinary one, on fresh copies: not an init-aware attack on
    # copies trained by SGD, which would claim power for an attack this model never got
    assert doc["power"]["copy"] == "reset" and doc["power"]["recipe"]["start"] == "fresh", doc["power"]


def test_an_init_file_of_another_shape_is_a_clear_error(gd_reference, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"1.weight": torch.zeros(3, 3)}, wrong)
    code, err = _run(["run", str(gd_reference.model_path), "--data", str(gd_reference.train_dir),
                      "--init", str(wrong), "--out", str(tmp_path / "o")])
    assert code == 2 and "--init" in err and "shape" in err


def finetuned_cnn_spec(trained_layers: str = "all") -> ReferenceSpec:
    """A small CNN pre-trained on the bundled faces, given a fresh head, fine-tuned by GD on 2 digits per class."""
    return ReferenceSpec(name=f"ft-cnn-{trained_layers}", dataset="digits", train_per_class=2, holdout_per_class=8,
                         arch="cnn", optimizer="gd", lr=0.01, epochs=150, batch_size=20, pretrain_dataset="lfw",
                         pretrain_per_class=100, pretrain_epochs=5, trained_layers=trained_layers)


@pytest.fixture(scope="module")
def finetuned_cnn(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_reference(finetuned_cnn_spec(), tmp_path_factory.mktemp("ft-cnn"))


def test_a_fine_tuned_cnn_audited_from_its_checkpoint_gives_back_its_members(finetuned_cnn, tmp_path: Path) -> None:
    import json

    config = tmp_path / "quick.toml"
    config.write_text(QUICK + "span_steps = 150\nspan_starts = 40\n")
    code, err = _run(["run", str(finetuned_cnn.model_path), "--data", str(finetuned_cnn.train_dir), "--holdout",
                      str(finetuned_cnn.holdout_dir), "--init", str(finetuned_cnn.init_path), "--out",
                      str(tmp_path / "o"), "--config", str(config), "--no-images", "--no-power-check"])
    assert code == 1, err
    doc = json.loads((tmp_path / "o" / "leakaudit.json").read_text())
    assert doc["mode"] == "init-aware" and doc["verdict"] == "fail"
    assert any("feature span" in n and "rank" in n for n in doc["inversion"]["notes"])
    summary = doc["summary"]
    # measured: every member has a candidate at SSIM ≥ 0.4, members' mean best 0.75 against 0.57 for non-members
    assert summary["train"]["fraction_above"]["0.4"] >= 0.5
    assert summary["train"]["mean"] > summary["holdout"]["mean"] + 0.1


def test_the_feature_span_holds_the_members_features_and_not_the_public_ones(finetuned_cnn) -> None:
    from leakaudit.inversion.featurespan import feature_span, first_linear_forward, linear_update
    from leakaudit.inversion.initaware import load_initial_state
    from leakaudit.model.target import load_model
    from leakaudit.zoo import split_members

    target = load_model(finetuned_cnn.model_path, input_size=(32, 32))
    forward, why = first_linear_forward(target)
    assert forward is not None, why
    data = split_members(finetuned_cnn_spec())
    with torch.no_grad():
        _, members = forward(data.train_images.float() / 255)
        _, others = forward(data.holdout_images.float() / 255)
    span, note = feature_span(linear_update(target, load_initial_state(finetuned_cnn.init_path), members.shape[1]),
                              target.device, target.num_classes)
    assert span is not None, note
    assert members.shape[1] == 64 * 8 * 8  # the backbone's map, flattened: the first linear layer's input
    # the backbone moved in fine-tuning, so the span holds the members' final features only nearly
    assert float(span.outside_fraction(members).max()) < float(span.outside_fraction(others).min())


def test_a_head_that_is_the_only_linear_layer_is_named_as_the_reason_for_no_span() -> None:
    """A backbone whose only linear layer is the head (ResNet-18) gets no span whatever its optimiser: the
    reason must say so, not blame Adam, while a wide layer's spread update still does."""
    from leakaudit.inversion.featurespan import feature_span

    gen = torch.Generator().manual_seed(0)
    head, note = feature_span(torch.randn(10, 512, generator=gen, dtype=torch.float64), torch.device("cpu"), 10)
    assert head is None and "10-output head" in note and "Adam" not in note, note
    wide, note = feature_span(torch.randn(256, 512, generator=gen, dtype=torch.float64), torch.device("cpu"), 10)
    assert wide is None and "Adam" in note and "head" not in note, note


def test_fine_tuning_only_the_dense_layers_keeps_the_pretrained_backbone(tmp_path: Path) -> None:
    from leakaudit.zoo import starting_classifier

    spec = replace(finetuned_cnn_spec("dense"), epochs=5, pretrain_epochs=1)
    built = build_reference(spec, tmp_path / "ref")
    start, trained = torch.load(built.init_path), torch.jit.load(str(built.model_path)).state_dict()
    assert torch.equal(start["0.weight"], trained["0.weight"]) and torch.equal(start["4.bias"], trained["4.bias"])
    assert not torch.equal(start["9.weight"], trained["9.weight"])
    # init.pt is the pre-trained network with its fresh head, rebuilt the same from the spec
    again = starting_classifier(spec, 1, 10).state_dict()
    assert all(torch.equal(again[k], start[k]) for k in start)


def test_the_first_linear_layers_input_is_the_same_through_hooks_and_through_torchscript(finetuned_cnn) -> None:
    from leakaudit.inversion.featurespan import first_linear_forward
    from leakaudit.model.target import TargetModel, load_model
    from leakaudit.zoo import build_classifier

    scripted = load_model(finetuned_cnn.model_path, input_size=(32, 32))
    module = build_classifier(finetuned_cnn_spec(), 1, 10)
    module.load_state_dict(torch.jit.load(str(finetuned_cnn.model_path)).state_dict())
    eager = TargetModel.from_module(module, (1, 32, 32), 10, device="cpu")
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_graph, by_hooks = first_linear_forward(scripted)[0](x)[1], first_linear_forward(eager)[0](x)[1]
        by_hand = module[:9](x)  # conv, pool, conv, pool, flatten: what the first Linear is given
    assert torch.allclose(by_graph, by_hand, atol=1e-5) and torch.allclose(by_hooks, by_hand, atol=1e-5)
    assert not module[9]._forward_pre_hooks  # the audited module is never instrumented, only a copy


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_minibatch_sgd_keeps_a_span_of_the_members_features_and_adam_spreads_it(
        optimizer: str, tmp_path: Path) -> None:
    """Minibatch SGD with momentum fills every live direction a little, yet its energy stays with the members."""
    from leakaudit.inversion.featurespan import feature_span, first_linear_forward, linear_update
    from leakaudit.inversion.initaware import load_initial_state
    from leakaudit.model.target import load_model
    from leakaudit.zoo import split_members

    spec = replace(finetuned_cnn_spec(), name=f"ft-cnn-{optimizer}", optimizer=optimizer, batch_size=2, epochs=300,
                   lr=0.002 if optimizer == "sgd" else 1e-3)
    built = build_reference(spec, tmp_path / "ref")
    assert built.metrics["train_accuracy"] == 1.0  # memorised: the case the span is about
    target = load_model(built.model_path, input_size=(32, 32))
    forward, why = first_linear_forward(target)
    assert forward is not None, why
    data = split_members(spec)
    with torch.no_grad():
        _, members = forward(data.train_images.float() / 255)
        _, others = forward(data.holdout_images.float() / 255)
    span, note = feature_span(linear_update(target, load_initial_state(built.init_path), members.shape[1]),
                              target.device, target.num_classes)
    if optimizer == "adam":
        assert span is None and "Adam" in note, note
        return
    assert span is not None, note
    assert span.rank > 256 // 2  # measured 180 of the 256 units: no low rank, yet the members' directions dominate
    assert float(span.outside_fraction(members).mean()) < 0.5 * float(span.outside_fraction(others).mean())
