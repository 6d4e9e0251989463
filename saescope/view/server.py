"""``saescope view SUITE``: a local, read-only web server for the feature browser.

Bound to 127.0.0.1 by default. It answers only:

    GET  /                      the app (static/index.html, app.js, app.css)
    GET  /api/data?key=KEY      JSON for a key of ``SuiteData`` (never a path)
    GET  /plots/NAME.png        a plot of the suite
    POST /api/prompt            {"sae": n, "text": "..."} → each token's top features (loads the model once)
    POST /api/steer             {"sae": n, "feature": i, "strength": s, "kind": "add", "text": "..."} →
                                unsteered and steered continuations (strength in multiples of the
                                feature's max activation; at most ``MAX_STEER_TOKENS`` new tokens)

Request bodies are capped at ``MAX_BODY`` bytes and prompts at ``MAX_PROMPT_CHARS`` characters;
anything else is 404, 405 or 413. Nothing is ever written. Only the user's own tab is answered
(``saescope.view.guard``: Host, Origin and a launch token); every failure is a JSON ``{"error": ...}``
with a 4xx/5xx status, never a dropped connection; idle connections time out after
``IDLE_TIMEOUT_SECONDS`` and up to ``LISTEN_BACKLOG`` connections wait to be accepted.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from saescope.errors import InvalidInput
from saescope.plan import RunPlan
from saescope.view.data import SuiteData
from saescope.view.guard import TOKEN_HEADER, RequestGuard, is_loopback
from saescope.view.vector_data import VectorRunData, browser_data

logger = logging.getLogger("saescope")
MAX_BODY = 16_384
MAX_PROMPT_CHARS = 2_000
MAX_PROMPT_TOKENS = 256
MAX_STEER_TOKENS = 40
IDLE_TIMEOUT_SECONDS = 30
LISTEN_BACKLOG = 128
STATIC_FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
                "/app.js": ("app.js", "text/javascript"), "/experts.js": ("experts.js", "text/javascript"),
                "/app.css": ("app.css", "text/css")}


def static_text(name: str) -> str:
    return resources.files("saescope.view").joinpath("static", name).read_text(encoding="utf-8")


class PromptInspector:
    """Runs a prompt through the model and one SAE of the suite: each token's strongest features."""

    def __init__(self, data: SuiteData, device: str | None = None, loaded: Any = None) -> None:
        self.data = data
        self.device = device
        self._loaded = loaded
        self._saes: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _model_and_sae(self, n: int) -> tuple[Any, Any]:
        """Load the model and SAE ``n`` once; call with the lock held."""
        from saescope.io.checkpoint import load
        from saescope.lm.models import load_model

        if self._loaded is None:
            plan = RunPlan.stored(self.data.index, self.data.folder)
            self._loaded = load_model(plan.model.model or self.data.index["model"], device=self.device, dtype=plan.model.dtype)
        if n not in self._saes:
            self._saes[n] = load(str(self.data.folder / self.data.entries[n]["path"])).to(self._loaded.device).eval()
        return self._loaded, self._saes[n]

    def steer(self, n: int, feature: int, strength: float, kind: str, text: str, max_new_tokens: int = 30, seed: int = 0) -> dict[str, Any]:
        from saescope.saes.stacked import input_multiplier, stacked_hookpoints
        from saescope.steer import (
            Intervention,
            feature_max_activation,
            steer_and_compare,
        )

        self._check(n, text)
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise InvalidInput(f"feature must be an integer index, got {feature!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not -1000 <= strength <= 1000:
            raise InvalidInput("strength must be a number in [-1000, 1000]")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_STEER_TOKENS:
            raise InvalidInput(f"max_new_tokens must be in 1..{MAX_STEER_TOKENS}")
        with self._lock:
            loaded, sae = self._model_and_sae(n)
            peak = feature_max_activation(self.data.folder / self.data.entries[n]["path"], feature) if isinstance(feature, int) else None
            hookpoint = None
            if stacked_hookpoints(sae):
                hookpoint = self._strongest_layer(n, sae, feature)
                peak = peak / input_multiplier(sae, hookpoint) if peak else None  # the page's maxima are in the SAE's common units
            intervention = Intervention(sae, feature, float(strength), kind=kind, unit="max", max_activation=peak or 1.0, hookpoint=hookpoint)
            plain, steered = steer_and_compare(loaded, text, [intervention], max_new_tokens=max_new_tokens, seed=seed)
        return {name: {"text": g.text, "feature_rate": g.feature_rate, "perplexity": round(g.perplexity, 2)}
                for name, g in (("unsteered", plain), ("steered", steered))} | {"max_activation": peak, "hookpoint": intervention.hookpoint}

    def _strongest_layer(self, n: int, sae: Any, feature: Any) -> str:
        """Where a multi-layer SAE's feature is steered: the layer it fires at most (from its interpretation), else the middle one."""
        from saescope.saes.stacked import stacked_hookpoints

        hookpoints = stacked_hookpoints(sae)
        try:
            summary = self.data.get(f"sae/{n}/summary")
            shard = self.data.get(f"sae/{n}/features/{feature // summary['shard_size'] * summary['shard_size']}")
            fires = shard[feature % summary["shard_size"]].get("layer_fires") or []
        except (KeyError, TypeError, IndexError):
            fires = []
        if fires and max(fires) > 0:
            return hookpoints[max(range(len(fires)), key=fires.__getitem__)]
        return hookpoints[len(hookpoints) // 2]

    def _check(self, n: Any, text: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(self.data.entries):
            raise InvalidInput(f"sae must be an index in 0..{len(self.data.entries) - 1}")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text must be a non-empty string")
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"text is longer than {MAX_PROMPT_CHARS} characters")

    def inspect(self, n: int, text: str, top: int = 5) -> dict[str, Any]:
        import torch

        from saescope.lm.capture import capture_dict
        from saescope.lm.hookpoints import resolve_hookpoints
        from saescope.saes.stacked import read_multipliers

        self._check(n, text)
        with self._lock:  # one model, shared by request threads
            loaded, sae = self._model_and_sae(n)
            tokenizer = loaded.tokenizer
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: MAX_PROMPT_TOKENS - 1]
            bos = tokenizer.bos_token_id
            input_ids = torch.tensor([([bos] if bos is not None else []) + ids], device=loaded.device)
            reads = read_multipliers(sae, sae.cfg.hookpoint if sae.cfg.target else self.data.entries[n]["hookpoint"])  # a transcoder reads mlp_in
            hookpoints = [h for h, _m in reads]
            points = resolve_hookpoints(loaded.model, hookpoints)
            with torch.no_grad():
                captured = capture_dict(loaded.model, points, input_ids)
                # a multi-layer SAE: every layer in the SAE's common units, [layers, tokens, d_sae]
                acts = torch.stack([sae.encode(captured[h][0].float() * m) for h, m in reads])
                per_token = acts.permute(1, 0, 2).reshape(acts.shape[1], -1)
                values, flat = per_token.topk(min(top, per_token.shape[1]), dim=1)
                features, layers = flat % sae.d_sae, flat // sae.d_sae
        offset = 1 if bos is not None else 0
        tokens = []
        for position, token_id in enumerate(input_ids[0].tolist()):
            if position < offset:
                continue
            pairs = [[int(f), round(float(v), 4)] + ([int(layer)] if len(hookpoints) > 1 else [])
                     for f, v, layer in zip(features[position].tolist(), values[position].tolist(), layers[position].tolist()) if v > 0]
            tokens.append({"text": tokenizer.decode([token_id]), "features": pairs})
        return {"sae": n, "tokens": tokens} | ({"hookpoints": hookpoints} if len(hookpoints) > 1 else {})


def make_handler(data: SuiteData | VectorRunData, inspector: PromptInspector | None, guard: RequestGuard):
    class Handler(BaseHTTPRequestHandler):
        server_version = "saescope"
        timeout = IDLE_TIMEOUT_SECONDS  # a stalled client releases its thread

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("view: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def _guarded(self, answer: Any) -> None:
            """Refuse foreign hosts, then answer; any failure becomes a JSON error, never a dropped connection."""
            problem = guard.host_problem(self.headers.get("Host"))
            if problem:
                self._error(HTTPStatus.FORBIDDEN, problem)
                return
            try:
                answer()
            except Exception as error:  # noqa: BLE001 - the connection must always get an answer
                logger.warning("view: %s %s failed: %s: %s", self.command, self.path[:200], type(error).__name__, error)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(error).__name__}); see the server's log")

        def do_GET(self) -> None:
            self._guarded(self._get)

        def do_POST(self) -> None:
            self._guarded(self._post)

        def _get(self) -> None:
            url = urlparse(self.path)
            if url.path in STATIC_FILES:
                name, kind = STATIC_FILES[url.path]
                text = static_text(name)
                if name == "index.html":  # the launch token, readable only by pages this server serves
                    text = text.replace("<!--STATIC-->", f"<script>window.SAESCOPE_TOKEN = {json.dumps(guard.token)};</script>")
                self._send(HTTPStatus.OK, text.encode("utf-8"), f"{kind}; charset=utf-8")
                return
            if url.path == "/api/data":
                key = parse_qs(url.query).get("key", [""])[0]
                try:
                    self._json(HTTPStatus.OK, data.get(key))
                except (KeyError, ValueError):
                    self._error(HTTPStatus.NOT_FOUND, "no such data")
                return
            if url.path.startswith("/plots/"):
                try:
                    self._send(HTTPStatus.OK, data.plot_file(url.path[len("/plots/"):]).read_bytes(), "image/png")
                except (KeyError, ValueError, OSError):
                    self._error(HTTPStatus.NOT_FOUND, "no such plot")
                return
            self._error(HTTPStatus.NOT_FOUND, "not found")

        def _post(self) -> None:
            path = urlparse(self.path).path
            if path not in ("/api/prompt", "/api/steer"):
                self._error(HTTPStatus.NOT_FOUND, "not found")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body must be at most {MAX_BODY} bytes")
                self.close_connection = True
                return
            body = self.rfile.read(length)
            problem = guard.post_problem(self.headers.get("Origin"), self.headers.get(TOKEN_HEADER))
            if problem:
                self._error(HTTPStatus.FORBIDDEN, problem)
                return
            if inspector is None:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, "prompt inspection is off (saescope view --no-model)")
                return
            try:
                try:
                    request = json.loads(body.decode("utf-8") or "{}")
                except UnicodeDecodeError:
                    raise InvalidInput("the request body must be UTF-8 JSON") from None
                except RecursionError:
                    raise InvalidInput("the request body is nested too deeply") from None
                if not isinstance(request, dict):
                    raise InvalidInput("the request body must be a JSON object")
                if path == "/api/prompt":
                    result = inspector.inspect(request.get("sae"), request.get("text"))
                else:
                    result = inspector.steer(request.get("sae"), request.get("feature"), request.get("strength"), request.get("kind", "add"),
                                             request.get("text"), request.get("max_new_tokens", 30))
            except (ValueError, TypeError, AttributeError, OverflowError) as error:
                self._error(HTTPStatus.BAD_REQUEST, str(error))
                return
            self._json(HTTPStatus.OK, result)

        def _refuse(self) -> None:
            self._guarded(lambda: self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only server"))

        do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG  # the default 5 resets connections under a burst of requests
    daemon_threads = True


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8765, prompts: bool = True,
                device: str | None = None, loaded: Any = None, allow_hosts: tuple[str, ...] = (),
                allow_remote: bool = False) -> ThreadingHTTPServer:
    """The browser server for the suite at ``folder``; binding anywhere but loopback needs ``allow_remote``."""
    if not is_loopback(host) and not allow_remote:
        raise InvalidInput(f"--host {host}: the browser would be reachable from the network, with the prompt and steer panels running "
                           "the model for anyone who connects; pass --allow-remote as well if that is what you want")
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port}: must be in 0..65535 (0 picks a free port)")
    data = browser_data(folder)
    inspector = PromptInspector(data, device=device, loaded=loaded) if prompts and isinstance(data, SuiteData) else None
    handler_guard = RequestGuard(host, port, tuple(allow_hosts))
    try:
        server = _Server((host, port), make_handler(data, inspector, handler_guard))
    except OSError as error:
        raise InvalidInput(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); choose another port") from None
    handler_guard.port = server.server_address[1]
    server.guard = handler_guard  # type: ignore[attr-defined]
    return server


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8765, prompts: bool = True, device: str | None = None,
          allow_hosts: tuple[str, ...] = (), allow_remote: bool = False) -> None:
    server = make_server(folder, host, port, prompts, device, allow_hosts=allow_hosts, allow_remote=allow_remote)
    address = f"http://{host}:{server.server_address[1]}/"
    if not is_loopback(host):
        logger.warning("saescope view is listening on %s: anyone who can reach this machine can browse the suite and run the model", host)
        print(f"warning: listening on {host}, reachable from the network; requests must name an allowed host "
              f"({', '.join(sorted(server.guard.names()))})", flush=True)  # type: ignore[attr-defined]
    print(f"saescope view: {Path(folder)} at {address}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
