"""The feature browser in a real headless Chromium (Playwright driving the system Chromium).

Under CI (CI=true) these tests must run: a missing Chromium or Playwright is a failure, and
``.ci/run`` installs Chromium first. Elsewhere they skip with a message saying how to enable them.
A failing test leaves a screenshot in $SAESCOPE_TEST_ARTIFACTS (default: the test's tmp folder).
"""

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from lm_helpers import save_tiny_model, tiny_suite_config, write_corpus

from saescope.interpret.run import interpret_suite
from saescope.suite import evaluate_suite, train_suite
from saescope.view import export_site, make_server

HOSTILE = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"


def _chromium() -> str:
    path = os.environ.get("SAESCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
        why = "the playwright package is missing (pip install -e '.[dev]')"
    else:
        why = "no Chromium found (apt-get install chromium, or set SAESCOPE_CHROMIUM to its path)"
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI but {why}")
        pytest.skip(f"browser tests skipped: {why}")
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = _chromium()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    config = tiny_suite_config(save_tiny_model(root / "model"), write_corpus(root / "c.txt", repeat=12))
    folder = root / "suite"
    train_suite(config, folder, progress=False, report=lambda line: None)
    evaluate_suite(folder, progress=False)
    interpret_suite(folder, tokens=4096, top_k=5, window=3, batch_contexts=8, progress=False)
    # Make the strongest example of feature 0..63 (whichever fires) carry a hostile token string.
    interpret = folder / "layers.1.resid_post/topk-w64-l0_4/interpret"
    records = json.loads((interpret / "features_00000.json").read_text())
    fired = next(r for r in records if r["top"])
    peak_token = fired["top"][0]["tokens"][3]
    vocab = json.loads((interpret / "vocab.json").read_text())
    vocab[str(peak_token)] = HOSTILE
    (interpret / "vocab.json").write_text(json.dumps(vocab))
    return folder, fired["id"]


@pytest.fixture
def server(suite):
    folder, _ = suite
    httpd = make_server(folder, port=0, prompts=True, device="cpu")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@contextlib.contextmanager
def page_for(browser, name, tmp_path):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
        assert not errors, f"JavaScript errors: {errors}"
    except BaseException:
        folder = Path(os.environ.get("SAESCOPE_TEST_ARTIFACTS", tmp_path))
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / f"{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
        raise
    finally:
        page.close()


def _check_feature_page(page, feature):
    page.wait_for_selector("#top-examples .tok")
    assert page.locator("h1").inner_text() == f"Feature #{feature}"
    tokens = page.locator("#top-examples .tok")
    assert tokens.count() > 3
    peak = page.locator("#top-examples .example").first.locator(".tok.peak")
    assert peak.get_attribute("title").startswith("activation ")
    assert "rgba(30, 90, 255" in peak.get_attribute("style")
    # The hostile token is shown as text, never parsed as HTML.
    assert HOSTILE in page.locator("#top-examples").inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img[src='x'], main script").count() == 0
    assert page.locator("svg.hist rect").count() > 0 and page.locator("table.logits").count() == 2
    # sections a page does not have (layers, prefix level, lineage) leave no stray text such as "null"
    assert page.evaluate("Array.from(document.getElementById('app').childNodes).filter((n) => n.nodeType === 3).length") == 0


def test_overview_to_feature_page(browser, server, suite, tmp_path):
    _folder, feature = suite
    with page_for(browser, "overview_to_feature", tmp_path) as page:
        page.goto(server)
        page.wait_for_selector("#sae-table a")
        assert page.locator("#sae-table tr").count() == 3
        assert page.locator(".plots img").count() == 5
        page.click("text=layers.1.resid_post/topk-w64-l0_4")
        page.wait_for_selector("#feature-list a")
        page.fill("#search", str(feature))
        page.click(f"#feature-list a:text-is('#{feature}')")
        _check_feature_page(page, feature)


def test_search_by_token_and_sorting(browser, server, suite, tmp_path):
    with page_for(browser, "search", tmp_path) as page:
        page.goto(server + "#/sae/1")
        page.wait_for_selector("#feature-list a")
        page.select_option("#sort", "max")
        values = [float(v) for v in page.locator("#feature-list tr td:nth-child(3)").all_inner_texts()[:10]]
        assert values == sorted(values, reverse=True)
        page.select_option("#search-mode", "token")
        page.fill("#search", "<img src=x")
        page.wait_for_selector("#feature-list a")
        assert page.locator("#feature-list a").count() >= 1


def test_try_a_prompt_then_open_a_feature(browser, server, tmp_path):
    with page_for(browser, "prompt", tmp_path) as page:
        page.goto(server + "#/sae/1")
        page.wait_for_selector("#prompt-text")
        page.fill("#prompt-text", "A list is a mutable sequence")
        page.click("#prompt-run")
        page.wait_for_selector("#prompt-result .feature-link", timeout=120_000)
        assert page.locator("#prompt-result .prompt-token").count() >= 4
        page.locator("#prompt-result .feature-link").first.click()
        page.wait_for_selector("h1:text-matches('Feature #')")


def test_static_export_works_from_file_urls(browser, suite, tmp_path):
    folder, feature = suite
    site = export_site(folder, tmp_path / "site")
    with page_for(browser, "static", tmp_path) as page:
        page.goto((site / "index.html").resolve().as_uri())
        page.wait_for_selector("#sae-table a")
        page.goto((site / "index.html").resolve().as_uri() + f"#/sae/1/feature/{feature}")
        _check_feature_page(page, feature)
        page.goto((site / "index.html").resolve().as_uri() + "#/sae/1")
        page.wait_for_selector("#prompt-panel")
        assert "needs the model" in page.locator("#prompt-panel").inner_text()


def test_steer_panel_shows_both_outputs(browser, server, suite, tmp_path):
    _folder, feature = suite
    with page_for(browser, "steer", tmp_path) as page:
        page.goto(server + f"#/sae/1/feature/{feature}")
        page.wait_for_selector("#steer-text")
        page.fill("#steer-text", "A list is")
        page.fill("#steer-strength", "6")
        page.click("#steer-run")
        page.wait_for_selector("#steer-steered .example", timeout=120_000)
        assert "perplexity" in page.locator("#steer-plain").inner_text()
        assert page.locator("#steer-steered .example").inner_text() != ""


# -- a multi-layer SAE and feature lineage ------------------------------------------------------------
@pytest.fixture(scope="module")
def layered_suite(tmp_path_factory):
    from saescope.suite.lineage import lineage_suite

    root = tmp_path_factory.mktemp("layered")
    config = tiny_suite_config(save_tiny_model(root / "model", n_layers=3), write_corpus(root / "c.txt", repeat=12), multilayer=True,
                               multilayer_baselines=["layers.*.resid_post"], batch_size=128)
    folder = root / "suite"
    train_suite(config, folder, progress=False, report=lambda line: None)
    evaluate_suite(folder, progress=False)
    interpret_suite(folder, tokens=2048, top_k=4, window=3, batch_contexts=8, progress=False)
    lineage_suite(folder, tokens=512, cosine_threshold=0.0, progress=False)  # threshold 0: every child links to its best parent
    return folder


@pytest.fixture
def layered_server(layered_suite):
    httpd = make_server(layered_suite, port=0, prompts=True, device="cpu")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _fired_feature(folder, path):
    records = json.loads((folder / path / "interpret" / "features_00000.json").read_text())
    return next(r["id"] for r in records if r["top"])


def test_a_multilayer_feature_page_shows_its_layers(browser, layered_server, layered_suite, tmp_path):
    feature = _fired_feature(layered_suite, "multilayer/topk-w64-l0_4")
    with page_for(browser, "multilayer_feature", tmp_path) as page:
        page.goto(layered_server + f"#/sae/0/feature/{feature}")
        page.wait_for_selector("#layer-view svg rect")
        assert page.locator("#layer-view svg rect").count() == 3
        labels = page.locator("#top-examples .chip.layer").all_inner_texts()
        assert labels and all(label in ("L0", "L1", "L2") for label in labels)
        page.goto(layered_server + "#/sae/0")
        page.wait_for_selector("#feature-list a")
        assert "mean layer" in page.locator("#feature-list tr").first.inner_text()
        page.fill("#prompt-text", "A list is a mutable sequence")
        page.click("#prompt-run")
        page.wait_for_selector("#prompt-result .feature-link", timeout=120_000)
        assert "@L" in page.locator("#prompt-result .feature-link").first.inner_text()


def test_steering_a_multilayer_feature_names_its_layer(browser, layered_server, layered_suite, tmp_path):
    feature = _fired_feature(layered_suite, "multilayer/topk-w64-l0_4")
    with page_for(browser, "multilayer_steer", tmp_path) as page:
        page.goto(layered_server + f"#/sae/0/feature/{feature}")
        page.wait_for_selector("#steer-text")
        page.fill("#steer-text", "A list is")
        page.click("#steer-run")
        page.wait_for_selector("#steer-steered .example", timeout=120_000)
        assert "steered at layers." in page.locator("#steer-result").inner_text()


def test_lineage_links_features_across_layers(browser, layered_server, layered_suite, tmp_path):
    feature = _fired_feature(layered_suite, "layers.1.resid_post/topk-w64-l0_4")
    with page_for(browser, "lineage", tmp_path) as page:
        page.goto(layered_server + f"#/sae/2/feature/{feature}")  # entries: multilayer, layer 0, layer 1, layer 2
        page.wait_for_selector("#lineage")
        parents = page.locator("#lineage .lineage-parents a")
        assert parents.count() >= 1 and "layers.0.resid_post" in parents.first.inner_text()
        parents.first.click()
        page.wait_for_selector("h1:text-matches('Feature #')")
        assert "#/sae/1/feature/" in page.url
        page.wait_for_selector("#lineage .lineage-children a")


def test_a_matryoshka_feature_page_shows_its_prefix_level(browser, tmp_path):
    root = tmp_path / "nested"
    config = tiny_suite_config(save_tiny_model(root / "model"), write_corpus(root / "c.txt", repeat=12), architectures=["matryoshka"],
                               hookpoints=["layers.1.resid_post"])
    folder = root / "suite"
    train_suite(config, folder, progress=False, report=lambda line: None)
    interpret_suite(folder, tokens=1024, top_k=3, window=2, batch_contexts=8, progress=False)
    summary = json.loads((folder / "layers.1.resid_post/matryoshka-w64-l0_4/interpret/summary.json").read_text())
    assert summary["prefixes"] == [4, 16, 64]
    httpd = make_server(folder, port=0, prompts=False)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with page_for(browser, "matryoshka", tmp_path) as page:
            page.goto(url + "#/sae/0/feature/2")
            page.wait_for_selector("#prefix-level")
            assert "level 1 of 3" in page.locator("#prefix-level").inner_text()
            page.goto(url + "#/sae/0/feature/40")
            page.wait_for_selector("#prefix-level")
            assert "level 3 of 3" in page.locator("#prefix-level").inner_text()
            page.goto(url + "#/sae/0")
            page.select_option("#sort", "id")
            page.wait_for_selector("#feature-list .prefix-level")
            assert page.locator("#feature-list .prefix-level").nth(5).inner_text() == "2 of 3"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_another_site_in_the_browser_cannot_run_the_model(browser, server, tmp_path, caplog):
    """A page from another origin sends the cross-site POST a real attack would send; the server refuses it (issue 13)."""
    import logging

    attacker = tmp_path / "attacker.html"
    attacker.write_text("<!doctype html><title>elsewhere</title>")
    body = json.dumps({"sae": 1, "feature": 0, "strength": 5, "text": "A list is", "max_new_tokens": 3})
    with caplog.at_level(logging.DEBUG, logger="saescope"), page_for(browser, "cross_site", tmp_path) as page:
        page.goto(attacker.as_uri())
        page.evaluate("""([url, body]) => fetch(url, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body})
                         .then(() => "sent", () => "blocked")""", [server + "api/steer", body])
        time.sleep(0.5)
    answered = [r.getMessage() for r in caplog.records if "api/steer" in r.getMessage()]
    assert answered and all('" 403 ' in line for line in answered), answered
