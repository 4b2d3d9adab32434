"""``covseg serve``: a local web viewer. Drop a scan, see lungs and infection over the CT, read
the burden report.

``app`` (routes, the guard, :func:`serve`), ``jobs`` (the queue and its worker: the inference
path of ``covseg segment``), ``uploads`` (streaming, typing by content, safe zip extraction),
``display`` (what the viewer loads), ``summary`` (the CSV), ``static/`` (our page; NiiVue is
copied into ``static/vendor/`` by ``make``).
"""

from __future__ import annotations

from covseg.serve.app import create_app, serve
from covseg.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]
