"""The feature browser for SAEs on vectors, in headless Chromium: images (decoder rows, top examples), enrichment, the MDL choice."""

import base64
import io
import json
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_browser import HOSTILE, browser, page_for  # noqa: F401  (browser is a fixture)

import saescope
from saescope.cli import main
from saescope.view import export_site, make_server

SIDE = 6


def bars(rng, n):
    """6x6 images, each one of four bars (two rows, two columns) plus noise, labelled by its bar."""
    images = rng.random((n, SIDE, SIDE)) * 0.05
    kinds = rng.integers(0, 4, n)
    for i, kind in enumerate(kinds):
        if kind < 2:
            images[i, 1 + 3 * kind, :] += 1.0
        else:
            images[i, :, 1 + 3 * (kind - 2)] += 1.0
    names = np.array(["top row", "bottom row", "left column", HOSTILE])[kinds]
    return images.reshape(n, -1).astype(np.float32), names


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectors")
    rng = np.random.default_rng(0)
    pixels, names = bars(rng, 1200)
    frame = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(SIDE * SIDE)])
    frame["bar"] = names
    frame.to_csv(root / "bars.csv", index=False)
    plan = {"data": {"array": str(root / "bars.csv"), "center": False},
            "training": {"tokens": 1200 * 40 // 200 * 200, "batch_size": 200, "seed": 0},
            "sweep": {"architectures": ["topk"], "widths": [4, 16], "target_l0s": [1]}}
    saescope.train(plan, root / "saes", progress=False)
    assert main(["select", str(root / "saes"), "--data", str(root / "bars.csv"), "--max-fvu", "0.9"]) == 0
    assert main(["interpret", str(root / "saes"), "--data", str(root / "bars.csv"), "--image-shape", f"{SIDE}x{SIDE}", "--top-k", "4"]) == 0
    return root


@pytest.fixture
def vector_server(image_run):
    httpd = make_server(image_run / "saes", port=0, prompts=True, device="cpu")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def decoded(src):
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_image_saes_show_decoder_rows_and_top_examples_as_images(browser, vector_server, image_run, tmp_path):  # noqa: F811
    with page_for(browser, "vectors_overview", tmp_path) as page:
        page.goto(vector_server)
        page.wait_for_selector("#sae-table a")
        assert page.locator("#sae-table tr").count() == 3
        assert page.locator(".mdl-choice").count() == 1  # saescope select's choice is marked
        assert page.locator(".plots img[alt='description_length.png']").count() == 1
        page.click("text=topk-w4-l0_1")
        page.wait_for_selector("#feature-list img.thumb")
        assert page.locator("#feature-list img.thumb").count() == 4
        # the features of a 4-latent SAE on four bars: each one's best category is a bar, with a high AUROC
        best = page.locator("#feature-list tr td:nth-child(5)").all_inner_texts()
        assert all(text.startswith("bar: ") for text in best)
        page.select_option("#sort", "auroc")
        page.locator("#feature-list a").first.click()
        page.wait_for_selector("#decoder-view img.decoder-image")
        assert page.locator("h1").inner_text().startswith("Feature #")
        # the decoder row is one bar: red along a full row or column of the 6x6 image
        image = decoded(page.locator("#decoder-view img").get_attribute("src"))
        assert image.shape == (SIDE, SIDE, 3)
        redness = np.where(image[..., 0] == 255, (255 - image[..., 1].astype(float)) / 255, 0.0)  # 1 at the peak, 0 white or blue
        lines = np.concatenate([redness.mean(axis=1), redness.mean(axis=0)])
        assert lines.max() > 0.5 and redness.sum() - lines.max() * SIDE < 0.25 * redness.sum()
        examples = page.locator("#top-examples img.example-image")
        assert examples.count() == 4
        example = decoded(examples.first.get_attribute("src"))
        assert example.shape == (SIDE, SIDE, 3) and example.max() == 255
        # enrichment: AUROC bars for the label column; the hostile label is text, never HTML
        page.wait_for_selector(".enrichment[data-column='bar'] .bar")
        assert page.locator(".enrichment[data-column='bar'] tr").count() == 5
        assert HOSTILE in page.locator(".enrichment").inner_text() or HOSTILE in page.locator("#feature-list, main").first.inner_text()
        assert page.evaluate("window.__pwned") is None and page.locator("main img[src='x'], main script").count() == 0
        top_auroc = float(page.locator(".enrichment tr").nth(1).locator("td").nth(2).inner_text())
        assert top_auroc > 0.9
        # the scatter (the inputs' PCA here): every row drawn, the firing ones coloured, as many as the feature fires on
        feature = int(page.locator("h1").inner_text().removeprefix("Feature #"))
        record = json.loads((image_run / "saes" / "topk-w4-l0_1" / "interpret_vectors.json").read_text())["features"][feature]
        assert page.locator("#scatter-view svg circle").count() == 1200
        assert page.locator("#scatter-view svg circle.active").count() == len(record["scatter"]) > 100


def test_image_features_work_in_a_static_export(browser, image_run, tmp_path):  # noqa: F811
    site = export_site(image_run / "saes", tmp_path / "site")
    with page_for(browser, "vectors_static", tmp_path) as page:
        page.goto((site / "index.html").as_uri() + "#/sae/1/feature/0")
        page.wait_for_selector("#decoder-view img.decoder-image")
        assert page.locator("#decoder-view img").get_attribute("src").startswith("data:image/png;base64,")


def test_view_and_interpret_refuse_what_they_cannot_show(image_run, tmp_path):
    with pytest.raises(SystemExit, match="no SAE here is interpreted yet"):
        saescope.train({"data": {"array": str(image_run / "bars.csv")}, "training": {"tokens": 400, "batch_size": 200},
                        "sweep": {"architectures": ["topk"], "widths": [4], "target_l0s": [1]}}, tmp_path / "fresh", progress=False)
        main(["view", str(tmp_path / "fresh"), "--export", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="neither a suite"):
        main(["view", str(tmp_path), "--export", str(tmp_path / "out2")])
    with pytest.raises(SystemExit, match="holds 64 values but the vectors have 36"):
        main(["interpret", str(image_run / "saes" / "topk-w4-l0_1"), "--data", str(image_run / "bars.csv"), "--image-shape", "8x8"])
    with pytest.raises(SystemExit, match="--image-shape is for SAEs on vectors"):
        main(["interpret", str(image_run / "saes"), "--image-shape", "6x6"])
