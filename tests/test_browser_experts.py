"""The browser's mixture-of-experts pages, in Chromium: a suite of a tiny MoE model, interpreted (so its
features record their experts), with an expert profile in ``SUITE/experts/NAME``."""

from __future__ import annotations

import threading

import pytest
from lm_helpers import CORPUS, tiny_suite_config, tiny_tokenizer, write_corpus
from model_zoo import zoo_model
from test_browser import browser, page_for  # noqa: F401  (the Chromium fixture and the page helper)

from saescope.experts.run import run_profile
from saescope.interpret.run import interpret_suite
from saescope.lm.models import LoadedModel
from saescope.suite import train_suite
from saescope.view import export_site, make_server
from saescope.view.data import SuiteData


@pytest.fixture(scope="module")
def moe_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_browser")
    model = zoo_model("qwen2_moe")
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    config = tiny_suite_config(str(root / "model"), write_corpus(root / "c.txt", repeat=12), hookpoints=["layers.1.resid_post"])
    folder = root / "suite"
    train_suite(config, folder, progress=False, report=lambda line: None)
    interpret_suite(folder, tokens=2048, top_k=4, window=3, batch_contexts=8, progress=False)
    run_profile(LoadedModel(model, tiny_tokenizer(), "tiny-qwen2-moe"), CORPUS[:6], CORPUS[6:12], folder / "experts" / "docs-vs-code", draws=50)
    return folder


@pytest.fixture
def moe_server(moe_suite):
    httpd = make_server(moe_suite, port=0, prompts=False)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_data_keys_name_profiles_and_expert_tables_only(moe_suite):
    data = SuiteData(moe_suite)
    keys = data.keys()
    assert "experts/docs-vs-code" in keys and "sae/0/experts" in keys
    assert data.get("suite")["expert_profiles"] == ["docs-vs-code"]
    for bad in ("experts/../suite", "experts/missing", "sae/0/experts/x"):
        with pytest.raises(KeyError):
            data.get(bad)


def test_profile_heat_map_expert_page_and_feature_section(browser, moe_server, moe_suite, tmp_path):  # noqa: F811
    with page_for(browser, "moe_pages", tmp_path) as page:
        page.goto(moe_server)
        page.click("#experts-link")
        page.click("#profile-list a:text-is('docs-vs-code')")
        page.wait_for_selector(".expert-heatmap")
        assert page.locator(".expert-cell").count() == 3 * 4
        assert page.locator("#profile-table tr").count() == 1 + 12
        page.select_option("#profile-by", "npmi")
        page.wait_for_selector(".expert-heatmap")
        page.locator(".expert-cell[data-layer='1'][data-expert='2']").click()
        page.wait_for_selector("h1:text-is('Layer 1, expert 2')")
        assert page.locator("#expert-rates tr").count() == 2
        links = page.locator(".expert-features a.feature-link")
        assert links.count() > 0
        links.first.click()
        page.wait_for_selector("#experts-of-feature")
        assert page.locator("h1").inner_text().startswith("Feature #")
        rows = page.locator("#feature-experts tr")
        assert rows.count() > 1 and "×" in rows.nth(1).inner_text()


def test_static_export_has_the_expert_pages(browser, moe_suite, tmp_path):  # noqa: F811
    site = export_site(moe_suite, tmp_path / "site")
    assert (site / "experts.js").is_file() and (site / "data" / "experts_docs-vs-code.js").is_file()
    with page_for(browser, "moe_static", tmp_path) as page:
        page.goto((site / "index.html").as_uri() + "#/experts/docs-vs-code")
        page.wait_for_selector(".expert-heatmap")
        assert page.locator(".expert-cell").count() == 12
