"""``saescope view SUITE --export DIR``: the feature browser as static files that work from ``file://``.

Browsers refuse ``fetch`` on ``file://`` pages, so every data key becomes a script file
``data/<key with / as _>.js`` that registers its JSON under ``window.SAESCOPE_DATA``; the app loads
them on demand with script tags. The prompt panel needs the model and is left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from saescope.errors import AlreadyExists
from saescope.view.server import static_text
from saescope.view.vector_data import browser_data


def export_site(folder: str | Path, out: str | Path) -> Path:
    data = browser_data(folder)
    target = Path(out)
    if target.exists() and any(target.iterdir()) and not (target / "index.html").is_file():
        raise AlreadyExists(f"--export {out}: the folder exists and is not a saescope export; choose an empty or new folder")
    (target / "data").mkdir(parents=True, exist_ok=True)
    html = static_text("index.html").replace("<!--STATIC-->", "<script>window.SAESCOPE_STATIC = true;</script>")
    (target / "index.html").write_text(html, encoding="utf-8")
    for name in ("app.js", "experts.js", "app.css"):
        (target / name).write_text(static_text(name), encoding="utf-8")
    for key in data.keys():
        payload = json.dumps(data.get(key), ensure_ascii=False, separators=(",", ":"))
        script = f"window.SAESCOPE_DATA=window.SAESCOPE_DATA||{{}};window.SAESCOPE_DATA[{json.dumps(key)}]={payload};\n"
        (target / "data" / (key.replace("/", "_") + ".js")).write_text(script, encoding="utf-8")
    plots = data.folder / "plots"
    if plots.is_dir():
        (target / "plots").mkdir(exist_ok=True)
        for png in plots.glob("*.png"):
            shutil.copyfile(png, target / "plots" / png.name)
    return target
