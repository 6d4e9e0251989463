"""Interpretation of a tiny suite, the read-only server and the static export (HTTP level; browser tests are separate)."""

import http.client
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from lm_helpers import save_tiny_model, tiny_loaded, tiny_suite_config, write_corpus

from saescope.interpret.directions import (
    logit_effects,
    output_directions,
    similar_features,
)
from saescope.interpret.run import interpret_suite
from saescope.suite import train_suite
from saescope.view import export_site, make_server


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    root = tmp_path_factory.mktemp("interp")
    corpus = write_corpus(root / "c.txt", repeat=12)
    with open(corpus, "a") as handle:  # a document with markup, to check escaping downstream
        handle.write("\n\n" + "<script>alert(1)</script> <b>bold</b> & more " * 20)
    config = tiny_suite_config(save_tiny_model(root / "model"), corpus)
    suite = root / "suite"
    train_suite(config, suite, progress=False, report=lambda line: None)
    result = interpret_suite(suite, tokens=4096, top_k=5, window=3, batch_contexts=8, progress=False)
    return suite, result


def test_interpret_writes_compact_records(interpreted):
    suite, result = interpreted
    assert set(result["saes"]) == {"layers.0.resid_post/topk-w64-l0_4", "layers.1.resid_post/topk-w64-l0_4"}
    folder = suite / "layers.1.resid_post/topk-w64-l0_4/interpret"
    summary = json.loads((folder / "summary.json").read_text())
    records = json.loads((folder / "features_00000.json").read_text())
    vocab = json.loads((folder / "vocab.json").read_text())
    assert summary["n_features"] == 64 and len(records) == 64 and summary["window"] == 3
    alive = [r for r in records if r["density"] > 0]
    assert alive, "some features must fire"
    for record in alive:
        values = [e["max"] for e in record["top"]]
        assert values == sorted(values, reverse=True) and values[0] == pytest.approx(record["max"], rel=1e-3)
        assert all(e["acts"][3] == e["max"] for e in record["top"])  # the window is centred on the peak
        assert all(str(t) in vocab for e in record["top"] for t in e["tokens"] if t >= 0)
        assert sum(record["histogram"]) == round(record["density"] * summary["n_tokens"])
        assert len(record["logits"]["top"]) == 10 and len(record["similar"]) == 5
        assert record["adjacent"] and record["adjacent"][0]["sae"] == "layers.0.resid_post/topk-w64-l0_4"
    # The densities in the summary, against a brute-force pass over the same contexts with the saved SAE.
    from saescope.data.tokens import TextContexts, special_token_ids, trainable_mask
    from saescope.io.checkpoint import load
    from saescope.lm.capture import capture_dict
    from saescope.lm.hookpoints import resolve_hookpoints

    loaded = tiny_loaded("llama", n_layers=2)  # the same seed-0 weights as the saved model
    sae = load(folder.parent)
    point = resolve_hookpoints(loaded.model, "layers.1.resid_post")[0]
    text = TextContexts(str(suite.parent / "c.txt"), loaded.tokenizer, 32, part="train")
    excluded = special_token_ids(loaded.tokenizer)
    counts, n_tokens = torch.zeros(64), 0
    for number, input_ids in enumerate(text.iter_batches(8, seed=0, shuffle=True)):
        if number >= 4096 // (8 * 32):
            break
        mask = trainable_mask(input_ids, excluded).reshape(-1)
        hidden = capture_dict(loaded.model, [point], input_ids)[point.name].reshape(-1, 32)
        counts += (sae.encode(hidden.float())[mask] > 0).sum(dim=0)
        n_tokens += int(mask.sum())
    assert summary["n_tokens"] == n_tokens
    assert summary["density"] == pytest.approx((counts / n_tokens).tolist(), abs=6e-5)  # stored to 4 decimals


def test_logit_effects_and_similarity_against_direct_computation():
    loaded = tiny_loaded("llama", n_layers=2)
    torch.manual_seed(0)
    decoder = torch.randn(6, 32)
    ids, values, low_ids, low_values = logit_effects(loaded.model, decoder, top=4, chunk=4)
    direct = (decoder * loaded.model.model.norm.weight.detach()) @ loaded.model.lm_head.weight.detach().T
    assert torch.allclose(values, direct.topk(4, dim=1).values, atol=1e-5)
    assert torch.equal(ids, direct.topk(4, dim=1).indices) and torch.allclose(low_values, direct.topk(4, dim=1, largest=False).values, atol=1e-5)
    gpt2 = tiny_loaded("gpt2", n_layers=1)
    centred = output_directions(gpt2.model, decoder)
    assert torch.allclose(centred, (decoder - decoder.mean(dim=1, keepdim=True)) * gpt2.model.transformer.ln_f.weight.detach(), atol=1e-6)
    same = torch.cat([decoder, decoder[:1] * 3])
    sim_ids, sim_cos = similar_features(same, top=2)
    assert sim_ids[0, 0] == 6 and sim_cos[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert (sim_ids != torch.arange(7).unsqueeze(1)).all()  # never itself


@pytest.fixture
def server(interpreted):
    suite, _ = interpreted
    httpd = make_server(suite, port=0, prompts=True, device="cpu")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def _status(url, data=None, method=None, headers=None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _headers(server, **extra):
    """JSON headers with the launch token that the served page carries."""
    page = _get(server + "/")[2].decode()
    token = re.search(r'window.SAESCOPE_TOKEN = "([^"]+)"', page).group(1)
    return {"Content-Type": "application/json", "X-Saescope-Token": token, **extra}


def test_server_serves_keys_plots_and_prompts(server):
    status, kind, body = _get(server + "/")
    assert status == 200 and kind.startswith("text/html") and b"app.js" in body
    status, _kind, body = _get(server + "/api/data?key=suite")
    suite = json.loads(body)
    assert [s["interpreted"] for s in suite["saes"]] == [True, True] and "depth.png" not in suite["plots"]  # not evaluated yet
    status, _kind, body = _get(server + "/api/data?key=sae/1/features/0")
    assert len(json.loads(body)) == 64
    status, result = _status(server + "/api/prompt", json.dumps({"sae": 1, "text": "A list is a mutable sequence"}).encode(), "POST",
                             _headers(server))
    assert status == 200 and result["tokens"] and all(len(t["features"]) <= 5 for t in result["tokens"])
    assert "".join(t["text"] for t in result["tokens"]) == "A list is a mutable sequence"


def test_server_is_read_only_and_bounded(server):
    for path in ("/api/data?key=../../etc/passwd", "/api/data?key=sae/99/summary", "/plots/../suite.json", "/suite.json", "/../../etc/passwd",
                 "/api/data?key=sae/0/features/../../x"):
        assert _status(server + path)[0] == 404, path
    assert _status(server + "/api/data?key=suite", data=b"x", method="PUT")[0] == 405
    assert _status(server + "/api/data?key=suite", method="DELETE")[0] == 405
    too_big = json.dumps({"sae": 0, "text": "x" * 20_000}).encode()
    assert _status(server + "/api/prompt", too_big, "POST", _headers(server))[0] == 413
    status, body = _status(server + "/api/prompt", json.dumps({"sae": 7, "text": "hi"}).encode(), "POST", _headers(server))
    assert status == 400 and "sae must be an index" in body["error"]
    status, body = _status(server + "/api/prompt", json.dumps({"sae": 0, "text": "y" * 2_500}).encode(), "POST", _headers(server))
    assert status == 400 and "longer than 2000" in body["error"]


def test_static_export_has_every_key_as_a_script(interpreted, tmp_path):
    suite, _ = interpreted
    site = export_site(suite, tmp_path / "site")
    html = (site / "index.html").read_text()
    assert "window.SAESCOPE_STATIC = true" in html
    files = sorted(p.name for p in (site / "data").iterdir())
    assert "suite.js" in files and "sae_1_features_0.js" in files and "sae_0_vocab.js" in files
    script = (site / "data" / "sae_1_summary.js").read_text()
    assert script.startswith("window.SAESCOPE_DATA=window.SAESCOPE_DATA||{};window.SAESCOPE_DATA[\"sae/1/summary\"]=")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a saescope export"):
        export_site(suite, tmp_path / "other")


def test_server_steer_endpoint(server):
    body = json.dumps({"sae": 1, "feature": 0, "strength": 3, "kind": "add", "text": "A list is", "max_new_tokens": 5}).encode()
    status, result = _status(server + "/api/steer", body, "POST", _headers(server))
    assert status == 200 and set(result) >= {"unsteered", "steered", "max_activation"}
    assert result["steered"]["perplexity"] > 0
    for bad, message in (({"sae": 1, "feature": 999, "strength": 1, "text": "x"}, "feature 999 does not exist"),
                         ({"sae": 1, "feature": 0, "strength": 1, "text": "x", "max_new_tokens": 500}, "max_new_tokens must be in 1..40"),
                         ({"sae": 1, "feature": 0, "strength": "big", "text": "x"}, "strength must be a number"),
                         ({"sae": 1, "feature": 0, "strength": 1, "kind": "boost", "text": "x"}, "kind must be one of")):
        status, result = _status(server + "/api/steer", json.dumps(bad).encode(), "POST", _headers(server))
        assert status == 400 and message in result["error"], bad


def _raw(server, request: bytes) -> tuple[int, dict]:
    """Send raw bytes and read the status and JSON body (the connection must get an answer)."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.connect()
    connection.sock.sendall(request)
    response = http.client.HTTPResponse(connection.sock)
    response.begin()
    body = response.read()
    connection.close()
    return response.status, json.loads(body or b"null")


def test_the_server_answers_only_its_own_tab(server):
    """DNS rebinding and cross-site POSTs are refused; the served page's token and origin are accepted (issue 13)."""
    port = server.rsplit(":", 1)[1]
    status, body = _raw(server, b"GET /api/data?key=suite HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert status == 403 and "not this server's (a DNS-rebinding guard)" in body["error"]
    assert _raw(server, f"GET /api/data?key=suite HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())[0] == 200
    payload = json.dumps({"sae": 1, "feature": 0, "strength": 1, "text": "A list", "max_new_tokens": 2}).encode()
    cross_site = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    status, body = _status(server + "/api/steer", payload, "POST", cross_site)
    assert status == 403 and "cross-origin request from http://evil.example refused" in body["error"]
    status, body = _status(server + "/api/steer", payload, "POST", {"Content-Type": "text/plain"})  # no token: a page that cannot read ours
    assert status == 403 and "X-Saescope-Token" in body["error"]
    status, body = _status(server + "/api/steer", payload, "POST", _headers(server, **{"X-Saescope-Token": "guessed"}))
    assert status == 403
    assert _status(server + "/api/steer", payload, "POST", _headers(server, Origin=f"http://127.0.0.1:{port}"))[0] == 200


def test_malformed_requests_get_an_answer_not_a_dropped_connection(server):
    headers = _headers(server)
    for key in ("sae/" + "9" * 5000 + "/summary", "sae/0/features/" + "1" * 5000, "sae/0/summary\n"):
        assert _status(server + "/api/data?key=" + urllib.parse.quote(key))[0] == 404, key[:30]
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    for body, expected in ((deep, "nested too deeply"), (b'{"sae": 0, "text": "caf\xe9"}', "UTF-8 JSON"),
                           (json.dumps({"sae": 1, "feature": True, "strength": 1, "text": "x"}).encode(), "feature must be an integer"),
                           (json.dumps({"sae": True, "text": "x"}).encode(), "sae must be an index"),
                           (b'{"sae": 1, "feature": 0, "strength": 1, "text": "x", "max_new_tokens": Infinity}', "max_new_tokens must be in 1..40")):
        path = "/api/prompt" if b'"sae": true' in body or b"caf" in body else "/api/steer"
        status, result = _status(server + path, body[:16_000] if body is deep else body, "POST", headers)
        assert status in (400, 413) and (status == 413 or expected in result["error"]), (expected, result)


def test_binding_beyond_loopback_needs_a_flag(interpreted):
    suite, _ = interpreted
    with pytest.raises(ValueError, match="--host 0.0.0.0: the browser would be reachable from the network.*--allow-remote"):
        make_server(suite, host="0.0.0.0", port=0, prompts=False)
    with pytest.raises(ValueError, match="--port 70000: must be in 0..65535"):
        make_server(suite, port=70000, prompts=False)
    httpd = make_server(suite, host="0.0.0.0", port=0, prompts=False, allow_remote=True, allow_hosts=("myhost.lan",))
    try:
        assert httpd.request_queue_size >= 64 and {"myhost.lan", "localhost"} <= httpd.guard.names()
    finally:
        httpd.server_close()


def test_a_stalled_connection_is_closed(interpreted, monkeypatch):
    import socket
    import time

    import saescope.view.server as server_module

    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_SECONDS", 1)
    suite, _ = interpreted
    httpd = make_server(suite, port=0, prompts=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        stalled = socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=10)
        stalled.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        started = time.monotonic()
        assert stalled.recv(1024) == b""  # the server hangs up
        assert time.monotonic() - started < 5
        stalled.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
