"""``covseg serve``: a local web viewer. Drop a scan, see lungs and infection over the CT, read
the burden report.

``app`` (routes, the guard, :func:`serve`), ``jobs`` (the queue and its worker: the inference
path of ``covseg segment``), ``uploads`` (streaming, typing by content, safe zip extraction),
``series`` (a DICOM folder sent file by file), ``display`` (the arrays the viewer draws),
``summary`` (the CSV), ``static/`` (the page and its slice viewer, drawn on a 2-D canvas: no
WebGL, nothing fetched from elsewhere).
"""

from __future__ import annotations

from covseg.serve.app import create_app, serve
from covseg.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]
