"""``saescope demo`` (what ``make demo`` runs): a small Gemma-Scope-style suite on the built-in model.

SmolLM2-135M's residual stream at three depths, JumpReLU and TopK, one width, two target L0s:
twelve SAEs trained from one pass over the built-in corpus, evaluated inside the model (ΔLM loss),
tabulated and plotted, then interpreted (top activations, histograms, logit effects) for the
feature browser, which is also exported as a static site. Sized to finish in about a quarter of an hour on 2 CPU cores; the same
config with more tokens is the starting point for a real suite (``saescope train --config``).
A second run reuses a finished suite and a killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

DEMO_CONFIG: dict[str, Any] = {
    "hookpoints": ["layers.2.resid_post", "layers.6.resid_post", "layers.10.resid_post"],
    "architectures": ["jumprelu", "topk"],
    "widths": ["4x"],
    "target_l0s": [16, 32],
    "tokens": 163_840,
    "batch_size": 2048,
    "lr": {"jumprelu": 4e-3},
    "eval_tokens": 2048,
    "shuffle_buffer_tokens": 32_768,
}
INTERPRET_TOKENS = 32_768
DEMO_MAX_FVU = 0.2  # the FVU bound of the demo's MDL choice: every demo hookpoint has an SAE within it


def mdl_choices(rows: list[dict]) -> str:
    """One line per hookpoint: the SAE with the shortest description among those within the demo's FVU bound."""
    from saescope.evaluation.selection import chosen, select_saes

    picks = chosen(select_saes(rows, by="mdl", max_fvu=DEMO_MAX_FVU))
    lines = [f"\nMDL choice per hookpoint (shortest description, bits/token, among SAEs with quantised FVU ≤ {DEMO_MAX_FVU}):"]
    for hookpoint in dict.fromkeys(r["hookpoint"] for r in rows if not r.get("layer_of")):
        pick = picks.get(hookpoint)
        lines.append(f"  {hookpoint:<24} " + (f"{pick.path.split('/')[-1]} ({pick.bits:.1f} bits, {pick.bins} bins)" if pick else "none within the bound"))
    return "\n".join(lines)


def run_demo(out: str | Path = "demo-suite", tokens: int | None = None, report=None) -> int:
    from saescope.interpret.run import interpret_suite
    from saescope.io.suite_index import is_suite, read_index
    from saescope.io.trainer_state import has_trainer_state
    from saescope.suite import SuiteConfig, evaluate_suite, format_table, train_suite
    from saescope.suite.lineage import LINEAGE_FILE, lineage_suite
    from saescope.view import export_site

    say = report or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    values = dict(DEMO_CONFIG)
    if tokens is not None:
        values["tokens"] = tokens
    config = SuiteConfig.from_dict(values, source="demo config")
    started = time.perf_counter()
    if is_suite(out) and read_index(out).get("status") == "complete":
        say(f"{out} already holds the finished demo suite; evaluating it again (delete the folder to retrain)")
    else:
        resume = has_trainer_state(out / "checkpoint") or is_suite(out)  # an unfinished suite continues (or restarts in place)
        say(("resuming the demo suite in " if resume else "training the demo suite into ") + str(out))
        train_suite(config, out, resume=resume, progress=True, report=say)
    trained = time.perf_counter()
    rows = evaluate_suite(out, progress=sys.stderr.isatty(), max_fvu=DEMO_MAX_FVU)
    evaluated = time.perf_counter()
    first = out / read_index(out)["saes"][0]["path"] / "interpret" / "summary.json"
    if not first.is_file():
        say(f"interpreting every feature over {INTERPRET_TOKENS:,} tokens")
        interpret_suite(out, tokens=INTERPRET_TOKENS, progress=sys.stderr.isatty())
    if not (out / LINEAGE_FILE).is_file():
        say("linking features across layers 2 -> 6 -> 10 (saescope lineage)")
        lineage_suite(out, progress=sys.stderr.isatty())
    site = export_site(out, out / "site")
    finished = time.perf_counter()
    print(format_table(rows))
    print(mdl_choices(rows))
    plots = sorted((out / "plots").glob("*.png"))
    print(
        f"\nDemo finished in {(finished - started) / 60:.1f} min (training and in-model evaluation {(trained - started) / 60:.1f} min, "
        f"report and plots {evaluated - trained:.0f} s, interpretation and lineage {finished - evaluated:.0f} s).\n"
        f"  suite index    {out / 'suite.json'}  (saescope info {out})\n"
        f"  SAE folders    {out}/<hookpoint>/<arch>-w<width>-l0_<target>/  (cfg.json, sae_weights.safetensors, metrics.json, interpret/)\n"
        f"  metrics        {out / 'eval.json'}, {out / 'eval.csv'}\n"
        f"  lineage        {out / LINEAGE_FILE}  (features linked across layers; shown on feature pages)\n"
        f"  plots          " + ", ".join(str(p) for p in plots) + "\n"
        f"  selection      saescope select {out} --by mdl --max-fvu {DEMO_MAX_FVU}   (why each other SAE was out)\n"
        f"  browse         saescope view {out}   (http://127.0.0.1:8765/, with a prompt panel)\n"
        f"                 or open {site.resolve() / 'index.html'} (static, offline)\n"
        f"  the config     {out / 'suite.yaml'}  (edit and run: saescope train --config {out / 'suite.yaml'} --out NEW_FOLDER)"
    )
    return 0
