"""Planning a suite from a model's config alone: widths and parameters on the meta device, the estimate per process."""

from __future__ import annotations

import re

import pytest
from model_zoo import FAMILIES, zoo_model

from saescope.cli import main
from saescope.lm.capture import site_widths
from saescope.lm.hookpoints import available_hookpoints, resolve_hookpoints
from saescope.lm.skeleton import model_skeleton, parameter_count, skeleton_site_widths
from saescope.jobs import ReadSpec
from saescope.plan_jobs import PlannedJob


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_skeleton_widths_and_parameters_equal_the_real_models(family: str, tmp_path) -> None:
    model = zoo_model(family)
    model.config.save_pretrained(tmp_path)
    names = list(available_hookpoints(model))
    real = site_widths(model, resolve_hookpoints(model, names, check=False))
    skeleton = model_skeleton(str(tmp_path))
    assert next(skeleton.parameters()).is_meta
    assert skeleton_site_widths(skeleton, resolve_hookpoints(skeleton, names, check=False)) == real
    assert parameter_count(skeleton) == parameter_count(model)


def _estimate_lines(capsys, folder, *extra: str) -> dict[str, str]:
    code = main(["train", "--model", str(folder), "--hookpoints", "layers.*.resid_post", "layers.*.mlp_out", "--arch", "jumprelu", "topk",
                 "--width", "8192", "--target-l0", "8", "16", "--tokens", "20000", "--out", str(folder / "never"), "--estimate-only", *extra])
    assert code == 0
    assert not (folder / "never").exists()  # nothing is trained or written
    return {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}


def test_estimate_only_plans_per_process_without_loading_weights(tmp_path, capsys) -> None:
    zoo_model("llama").config.save_pretrained(tmp_path)  # a config and no weights: loading the model would fail
    one = _estimate_lines(capsys, tmp_path)
    four = _estimate_lines(capsys, tmp_path, "--processes", "4", "--device-tflops", "100")
    assert "24 SAEs" in one["plan"] and "6 hookpoints" in one["plan"] and "3 layers" in one["plan"]
    memory = {n: float(re.search(r"([\d.]+) GiB", lines["memory in the process" if n == 1 else "memory per process"]).group(1))
              for n, lines in ((1, one), (4, four))}
    assert memory[4] < memory[1]
    assert "received by the busiest process" in four["activations exchanged per step"] and "all-to-all" in four["activations exchanged per step"]
    assert "100 TFLOP/s per device (given)" in four["time"]


def test_replicated_placement_holds_every_sae_per_process_and_splits_the_step(tmp_path, capsys, monkeypatch) -> None:
    from saescope.suite import preflight

    monkeypatch.setattr(preflight, "matmul_flops_per_second", lambda device: 1e11)
    saes = [PlannedJob(f"layers.{i}.resid_post/topk", f"layers.{i}.resid_post", i, "sae", "topk", 576, 4608, 32.0, ReadSpec((f"layers.{i}.resid_post",))) for i in range(2)]
    common = dict(tokens=10**6, batch_size=4096, shuffle_buffer_tokens=65536, model_params=10**8, model_bytes=4 * 10**8,
                  forward_fraction=1.0, eval_tokens=0, checkpointing=False, out_dir=tmp_path, device="cpu", processes=2)
    sharded = preflight.estimate(saes, **common)
    replicated = preflight.estimate(saes, placement="replicated", **common)
    state = 4 * 4 * saes[0].n_params
    assert sharded.memory_parts["SAE state"] == state and replicated.memory_parts["SAE state"] == 2 * state
    assert replicated.memory_parts["step transients"] == sharded.memory_parts["step transients"] // 2  # half the rows each
    assert replicated.seconds == pytest.approx(sharded.seconds)  # the same work, split by rows instead of by SAE
    assert replicated.reduced_bytes_per_step == 4 * 2 * saes[0].n_params and sharded.reduced_bytes_per_step == 0
    zoo_model("llama").config.save_pretrained(tmp_path)
    lines = _estimate_lines(capsys, tmp_path, "--processes", "4", "--device-tflops", "100", "--placement", "replicated")
    assert "replicated placement" in lines["processes"] and "MiB per process" in lines["gradients all-reduced per step"]


def test_estimate_only_refusals(tmp_path) -> None:
    zoo_model("llama").config.save_pretrained(tmp_path)
    base = ["train", "--model", str(tmp_path), "--hookpoints", "layers.0.resid_post", "--arch", "topk", "--width", "64",
            "--target-l0", "8", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="at most 1 processes, or use placement replicated"):
        main([*base, "--estimate-only", "--processes", "2", "--placement", "sharded"])
    with pytest.raises(SystemExit, match="torchrun"):
        main([*base, "--processes", "2"])
    with pytest.raises(SystemExit, match="config.json"):
        main(["train", "--model", str(tmp_path / "missing-folder" / "x"), "--hookpoints", "layers.0.resid_post", "--out",
              str(tmp_path / "o"), "--estimate-only"])
