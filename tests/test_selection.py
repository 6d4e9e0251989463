"""Selection by minimum description length: the order on a planted suite, reasons for the SAEs left out, the CLI on vector SAEs."""

import json

import numpy as np
import pytest

import saescope
from saescope.cli import main
from saescope.errors import InvalidInput
from saescope.evaluation.description_length import DescriptionLength, Quantisation
from saescope.evaluation.selection import chosen, format_selection, select_saes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(path, fvu, index_bits, table, l0=16.0, width=1024, delta=0.1, hookpoint="layers.3.resid_post"):
    """An eval row whose description length is ``index_bits`` + value bits, per (bins, value bits, quantised FVU)."""
    record = DescriptionLength(variant="active", n_tokens=1000, fvu=fvu, index_bits=index_bits, max_fvu=fvu + 0.01,
                               table=tuple(Quantisation(b, v, q, 0.0) for b, v, q in table))
    return {"path": path, "hookpoint": hookpoint, "architecture": "topk", "width": width, "l0": l0, "fvu": fvu,
            "delta_lm_loss": delta, "mdl": record.to_dict()}


def planted_rows():
    return [
        # narrow and dense: few index bits, but FVU above the bound before quantisation
        row("narrow", 0.14, 60.0, [(4, 10.0, 0.15), (8, 20.0, 0.145)], l0=32, width=256, delta=0.3),
        # the middle: meets 0.1 at 8 bins (100 + 25 bits) but not at 4
        row("middle", 0.07, 100.0, [(4, 12.0, 0.11), (8, 25.0, 0.08), (16, 40.0, 0.072)], l0=16, width=1024, delta=0.12),
        # wide and sparse: many index bits, meets the bound at 4 bins (140 + 10 bits)
        row("wide", 0.05, 140.0, [(4, 10.0, 0.09), (8, 20.0, 0.06)], l0=8, width=8192, delta=0.1),
        # the sparsest of all, whose quantisation never meets the bound
        row("fragile", 0.095, 50.0, [(4, 5.0, 0.2), (8, 9.0, 0.13)], l0=4, width=8192, delta=0.5),
        # no description-length table (an older evaluation)
        {"path": "old", "hookpoint": "layers.3.resid_post", "architecture": "topk", "width": 512, "l0": 12.0, "fvu": 0.08,
         "delta_lm_loss": 0.2},
        # another hookpoint; a multi-layer SAE's per-layer row is not a candidate of its own
        row("other", 0.02, 30.0, [(4, 3.0, 0.03)], hookpoint="layers.9.resid_post"),
        row("stacked@layers.9.resid_post", 0.0, 1.0, [(4, 1.0, 0.0)], hookpoint="layers.9.resid_post") | {"layer_of": "stacked"},
    ]


def test_mdl_ranks_the_eligible_by_bits_and_says_why_the_rest_are_out():
    groups = select_saes(planted_rows(), by="mdl", max_fvu=0.1)
    assert list(groups) == ["layers.3.resid_post", "layers.9.resid_post"]
    ranked = groups["layers.3.resid_post"]
    assert [(c.path, c.rank) for c in ranked] == [("middle", 1), ("wide", 2), ("fragile", None), ("narrow", None), ("old", None)]
    assert ranked[0].bits == pytest.approx(125.0) and ranked[0].bins == 8 and ranked[0].quantised_fvu == 0.08
    assert ranked[1].bits == pytest.approx(150.0) and ranked[1].bins == 4
    reasons = {c.path: c.reason for c in ranked}
    assert reasons["narrow"] == "FVU 0.1400 > 0.1 before quantisation"
    assert reasons["fragile"] == "quantised FVU 0.1300 > 0.1 even at 8 bins"
    assert "rerun saescope eval --recompute" in reasons["old"]
    assert [c.path for c in groups["layers.9.resid_post"]] == ["other"]
    assert {h: c.path for h, c in chosen(groups).items()} == {"layers.3.resid_post": "middle", "layers.9.resid_post": "other"}
    # a looser bound lets every SAE with a table in: the shortest descriptions are now the sparse and the narrow ones
    loose = select_saes(planted_rows(), by="mdl", max_fvu=0.16)["layers.3.resid_post"]
    assert [(c.path, c.bits) for c in loose if c.rank] == [("fragile", 59.0), ("narrow", 70.0), ("middle", 112.0), ("wide", 150.0)]


def test_other_criteria_rank_within_the_same_bound():
    by_l0 = select_saes(planted_rows(), by="l0", max_fvu=0.1)["layers.3.resid_post"]
    # the sparsest eligible SAE is the one MDL rejects: its quantised code misses the bound
    assert [c.path for c in by_l0 if c.rank] == ["fragile", "wide", "old", "middle"]
    assert by_l0[-1].path == "narrow" and by_l0[-1].reason == "FVU 0.1400 > 0.1"
    # TopK SAEs of one k share their L0: the better reconstruction ranks first, whatever the names
    tied = [row("a-worse", 0.09, 50.0, [(4, 5.0, 0.095)], l0=8), row("b-better", 0.05, 60.0, [(4, 5.0, 0.06)], l0=8)]
    assert [c.path for c in select_saes(tied, by="l0", max_fvu=0.1)["layers.3.resid_post"]] == ["b-better", "a-worse"]
    by_loss = select_saes(planted_rows(), by="delta_lm_loss", max_fvu=0.1)["layers.3.resid_post"]
    assert by_loss[0].path == "wide"
    table = format_selection(select_saes(planted_rows(), by="mdl", max_fvu=0.1), "mdl", 0.1)
    assert "quantised FVU ≤ 0.1" in table
    narrow_line = [line for line in table.splitlines() if " narrow " in line][0]
    assert narrow_line.lstrip().startswith("out") and narrow_line.endswith("FVU 0.1400 > 0.1 before quantisation")
    assert "no SAE at" in format_selection(select_saes(planted_rows(), by="mdl", max_fvu=0.001), "mdl", 0.001)


def test_bad_criteria_and_bounds_are_named():
    with pytest.raises(InvalidInput, match="--by bits: choose one of mdl, l0, fvu, delta_lm_loss"):
        select_saes(planted_rows(), by="bits")
    for bound in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidInput, match="--max-fvu"):
            select_saes(planted_rows(), max_fvu=bound)


@pytest.fixture(scope="module")
def vector_sweep(tmp_path_factory):
    """Three TopK SAEs of different widths and k on clustered vectors, plus a held-out file."""
    folder = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(24, 16))
    def draw(n):
        weights = rng.exponential(size=(n, 24)) * (rng.random((n, 24)) < 0.15)
        return (weights @ atoms).astype(np.float32)
    np.save(folder / "train.npy", draw(4096))
    np.save(folder / "held_out.npy", draw(1024))
    plan = {"data": {"array": str(folder / "train.npy")}, "training": {"tokens": 4096 * 6, "batch_size": 256, "seed": 0},
            "sweep": {"architectures": ["topk"], "widths": [16, 64], "target_l0s": [2, 6]}}
    saescope.train(plan, folder / "saes", progress=False)
    return folder


def test_select_on_a_folder_of_vector_saes_and_the_cli(vector_sweep, capsys):
    folder = vector_sweep / "saes"
    groups = saescope.select(folder, by="mdl", max_fvu=0.9, data=str(vector_sweep / "held_out.npy"))
    candidates = groups["vectors"]
    assert len(candidates) == 4 and candidates[0].rank == 1
    ranked = [c for c in candidates if c.rank]
    assert [c.bits for c in ranked] == sorted(c.bits for c in ranked)
    saved = json.loads((folder / "selection.json").read_text())
    assert saved["chosen"] == {"vectors": candidates[0].path} and saved["max_fvu"] == 0.9
    assert len(json.loads((folder / "eval.json").read_text())["saes"]) == 4
    assert (folder / "plots" / "description_length.png").read_bytes()[:8] == PNG_MAGIC

    assert main(["select", str(folder), "--data", str(vector_sweep / "held_out.npy"), "--max-fvu", "0.9", "--by", "l0"]) == 0
    printed = capsys.readouterr().out
    assert "selection by l0" in printed and "topk-w16-l0_2" in printed and "selection.json" in printed
    with pytest.raises(SystemExit, match="give the vectors to measure on with --data"):
        main(["select", str(folder)])
    with pytest.raises(SystemExit, match="holds no SAE folders"):
        main(["select", str(vector_sweep), "--data", str(vector_sweep / "held_out.npy")])
    with pytest.raises(SystemExit):
        main(["select", str(folder), "--max-fvu", "0"])
