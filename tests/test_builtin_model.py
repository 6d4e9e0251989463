"""One bounded end-to-end run on the real built-in model (SmolLM2-135M) and corpus."""

import math

import pytest

from saescope.lm.models import builtin_gguf


def _builtin_available() -> bool:
    try:
        builtin_gguf("smollm2-135m")
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _builtin_available(), reason="the built-in model wheel is not installed (make test installs it)")
def test_harvest_train_and_splice_on_the_builtin_model(tmp_path):
    from saescope.data.lm_config import LmDataConfig
    from saescope.training import TrainConfig
    from saescope.training.on_model import SaeSpec, train_on_model

    config = TrainConfig(total_tokens=6144, batch_size=512, progress=False, normalization_tokens=1024, device="cpu")
    data = LmDataConfig(dataset="pydocs", context_size=64, batch_contexts=16, shuffle_buffer_tokens=2048)
    results = train_on_model("smollm2-135m", ["layers.3.resid_post"], [SaeSpec("topk", width=1152, target_l0=16)], config, data,
                             out_dir=str(tmp_path), eval_tokens=512)
    (_name, (sae, metrics)), = results.items()
    assert sae.d_in == 576 and sae.cfg.model_id == "smollm2-135m"
    assert metrics["l0"] == pytest.approx(16.0)
    assert math.isfinite(metrics["delta_lm_loss"]) and metrics["delta_lm_loss"] > 0
    assert 1.0 < metrics["clean_loss"] < 6.0  # a trained LM on English/Python prose
    assert metrics["zero_ablation_loss"] > metrics["spliced_loss"]
    assert 0 < metrics["fvu"] < 1.5
    assert (tmp_path / "layers.3.resid_post" / "topk-w1152-l0_16" / "metrics.json").is_file()
