"""Probes from the 2026-12 reliability report (issue 29) that must not come back: each mistake gets one clear message."""

from __future__ import annotations

import pytest
import torch

from saescope.cli import main
from saescope.errors import InvalidInput
from saescope.evaluation.metrics import evaluate_sae
from saescope.io.checkpoint import save_sae
from saescope.jobs import create_job
from saescope.saes import create_sae


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "a/../../b", "a//b", "./x"])
def test_a_job_name_cannot_leave_the_output_folder(name):
    with pytest.raises(InvalidInput, match="must be a relative path without '..'"):
        create_job("topk", 8, 16, target_l0=2, name=name)


def test_nested_job_names_are_still_folders():
    assert create_job("topk", 8, 16, target_l0=2, name="layers.6.resid_post/topk-w16-l0_2").name == "layers.6.resid_post/topk-w16-l0_2"


@pytest.mark.parametrize("option", [{"lr": "fast"}, {"target_l0": "many"}, {"sparsity_coefficient": [1]}, {"lr": True}])
def test_training_settings_of_the_wrong_type_are_refused_by_name(option):
    name = next(iter(option))
    with pytest.raises(InvalidInput, match=rf"\.{name} must be a number"):
        create_job("jumprelu", 8, 16, **option)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_evaluate_sae_refuses_a_bad_batch_size(batch_size):
    with pytest.raises(InvalidInput, match="batch_size must be a positive integer"):
        evaluate_sae(create_sae("topk", 8, 16, k=2), torch.randn(32, 8), batch_size=batch_size)


def test_convert_refuses_an_existing_destination_without_overwrite(tmp_path, capsys):
    source = save_sae(create_sae("topk", 8, 16, k=2), tmp_path / "sae")
    target = tmp_path / "out"
    target.mkdir()
    (target / "NOTES.md").write_text("mine")
    with pytest.raises(SystemExit, match="already exists and is not empty; choose another folder, or pass --overwrite"):
        main(["convert", str(source), str(target)])
    assert sorted(p.name for p in target.iterdir()) == ["NOTES.md"]
    assert main(["convert", str(source), str(target), "--overwrite"]) == 0
    assert (target / "NOTES.md").read_text() == "mine" and (target / "cfg.json").is_file()
