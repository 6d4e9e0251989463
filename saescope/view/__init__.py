"""The local feature browser: a read-only server (``serve``) and a static export (``export_site``)."""

from saescope.view.export import export_site
from saescope.view.server import make_server, serve

__all__ = ["export_site", "make_server", "serve"]
