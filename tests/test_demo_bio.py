"""The biology demo on scanpy's pbmc68k_reduced, shortened (issue 16, item 5): it runs, matches features to
cell types, and finds the B-cell and NK markers a biologist would check."""

import json

from saescope.demo_bio import format_summary, run_bio_demo


def test_the_biology_demo_finds_cell_types_and_their_markers(tmp_path):
    summary = run_bio_demo(tmp_path / "bio", epochs=60, report=lambda line: None)
    assert set(summary["runs"]) == {"genes", "genes-uncentred", "pca"}
    best = {e["category"]: e for e in summary["runs"]["genes"]["best_per_cell_type"]}
    assert len(best) == 10 and best["CD56+ NK"]["auroc"] > 0.9
    assert set(best["CD19+ B"]["markers_found"]) & {"CD79A", "MS4A1"} and set(best["CD56+ NK"]["markers_found"]) & {"NKG7", "GNLY"}
    # centring (the default) leaves no more latents dead than training on the raw, offset counts
    assert summary["runs"]["genes"]["dead_fraction"] <= summary["runs"]["genes-uncentred"]["dead_fraction"] + 0.05
    assert (tmp_path / "bio" / "cell_type_features.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "bio" / "summary.json").read_text())["runs"]["pca"]["best_per_cell_type"]
    assert "CD19+ B" in format_summary(summary)
    # the browser reads each run as a folder of vector SAEs; the scatter uses the file's own UMAP
    from saescope.view.vector_data import browser_data

    data = browser_data(tmp_path / "bio" / "genes")
    assert data.get("suite")["kind"] == "vectors" and "sae/0/vectors" in data.keys()
    interpreted = data.get("sae/0/vectors")
    assert interpreted["scatter"]["name"] == "UMAP" and len(interpreted["scatter"]["points"]) == 700
