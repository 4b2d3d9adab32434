"""The viewer's threshold slider: the server writes and serves the calibrated infection probability
(`segment --probabilities`, on by default), the labels carry the report's left/right split, and
the page recounts the infection for another threshold live, marked as not the shipped rule."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _serve_helpers import coloured_pixels, renders, shown_job, timed, wait_until
from covseg.checkpoint import load_checkpoint, save_checkpoint
from covseg.cli import main
from covseg.config import Calibration
from covseg.data.geometry import canonical_view
from covseg.data.io import read_image
from covseg.data.synthetic import make_phantom
from covseg.inference.burden import left_right_counts, lung_sides
from covseg.inference.probability import probability_level

starlette = pytest.importorskip("starlette", reason="covseg[serve] is not installed")
from starlette.testclient import TestClient  # noqa: E402

from covseg.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["_serve_fixtures"]  # the served, browser and page fixtures

AFFINE = np.diag([-0.8, -0.8, 5.0, 1.0])
OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint with a steep calibration (slope 300): its near-constant infection
    probabilities (0.5 within 0.01) spread over most of 0..1, so that other thresholds cut the
    lungs in parts; the masks are the tiny model's (the calibration is monotonic, offset 0)."""
    from segment_tiny import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    model, meta = load_checkpoint(path)
    steep = meta.replace(calibration=Calibration(infection_slope=300.0))
    return save_checkpoint(path.with_name("steep.safetensors"), model, steep)


def _phantom(path: Path, seed: int = 0, shape=(64, 64, 8)) -> Path:
    nib.save(nib.Nifti1Image(make_phantom(seed, shape)[0], AFFINE), str(path))
    return path


def _job(client, name: str, data: bytes) -> dict:
    r = client.post("/api/jobs", params={"name": name}, content=data, headers=OCTET)
    assert r.status_code == 202, r.text

    def finished():
        job = client.get(f"/api/jobs/{r.json()['id']}").json()
        return job if job["state"] in ("done", "failed") else None

    job = wait_until(finished, timeout=60, step=0.05)
    assert job["state"] == "done", job["error"]
    return job


def _arrays(get, display: dict) -> tuple[np.ndarray, np.ndarray]:
    """The viewer's ``(N, H, W)`` labels and probability levels (``get(url) -> bytes``)."""
    shape = display["shape"]
    labels = np.frombuffer(get(display["labels"]), np.uint8).reshape(shape)
    levels = np.frombuffer(get(display["probability"]["url"]), np.uint8).reshape(shape)
    return labels, levels


def _client(checkpoint: Path, root: Path, **config) -> TestClient:
    cfg = ServeConfig(checkpoint=str(checkpoint), device="cpu", max_upload_bytes=1 << 20, **config)
    return TestClient(create_app(cfg, root), base_url="http://127.0.0.1")


# ------------------------------------------------------------------------------- the arrays
def test_lung_sides_recount_the_reports_left_and_right():
    rng = np.random.default_rng(1)
    lungs = np.zeros((20, 40, 48), np.uint8)
    lungs[:, 8:30, 4:20] = 1  # the patient's right lung (low columns)
    lungs[:, 8:30, 28:44] = 1  # the left lung
    lungs[3:6, 10:14, 18:30] = 1  # lungs touching at the junction: cut at the midline
    lungs[7, 2:4, 23:25] = 1  # a small component on one side
    lungs &= rng.random(lungs.shape) > 0.1
    sides = lung_sides(lungs)
    assert set(np.unique(sides[lungs > 0])) == {1, 2} and not sides[lungs == 0].any()
    for _ in range(3):  # any infection inside the lungs: counted per side as the report does
        infection = lungs & (rng.random(lungs.shape) > rng.uniform(0.3, 0.9))
        counts = left_right_counts(lungs, infection)
        for side, code in (("left", 1), ("right", 2)):
            on = sides == code
            assert (int(on.sum()), int((on & (infection > 0)).sum())) == counts[side]


def test_server_serves_segments_probability_and_the_split(checkpoint, tmp_path):
    scan = _phantom(tmp_path / "scan.nii.gz", seed=2)
    cli = tmp_path / "cli"
    argv = ["segment", str(scan), "--out", str(cli), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--device", "cpu", "--probabilities"]) == 0
    (tmp_path / "root").mkdir()
    with _client(checkpoint, tmp_path / "root") as client:
        job = _job(client, "scan.nii.gz", scan.read_bytes())
        download = client.get(job["downloads"]["probability"]["url"])
        labels, levels = _arrays(lambda url: client.get(url).content, job["display"])
    # The download is `segment --probabilities`' file; the page's array is it, canonical.
    assert download.content == (cli / "scan_infection_prob.nii.gz").read_bytes()
    image = read_image(scan)
    written = np.asarray(nib.load(cli / "scan_infection_prob.nii.gz").dataobj)
    assert np.array_equal(levels, canonical_view(written, image))
    report = job["report"]
    info = job["display"]["probability"]
    assert info["scale"] == 255 and info["threshold_level"] == probability_level(
        report["threshold"]
    )
    # The shipped infection lies above the shipped level; bits 2/3 split the lungs as the report.
    infection = labels & 2 > 0
    assert infection.any() and (levels[infection] >= info["threshold_level"]).all()
    for side, bit in (("left", 4), ("right", 8)):
        on = labels & bit > 0
        assert int(on.sum()) == report[side]["lung_voxels"]
        assert int((on & infection).sum()) == report[side]["infection_voxels"]
    assert not (labels & 4 & (labels & 8) >> 1).any()  # one side per voxel


def test_without_probabilities_the_server_offers_no_slider(checkpoint, tmp_path):
    (tmp_path / "root").mkdir()
    scan = _phantom(tmp_path / "scan.nii.gz", shape=(32, 32, 3))
    with _client(checkpoint, tmp_path / "root", probabilities=False) as client:
        job = _job(client, "scan.nii.gz", scan.read_bytes())
        assert job["display"]["probability"] is None and "probability" not in job["downloads"]
        assert client.get(f"/api/jobs/{job['id']}/view/prob.raw").status_code == 404
        assert client.get(job["display"]["labels"]).status_code == 200


# -------------------------------------------------------------------------------- the page
def _cells(page) -> dict[str, float | None]:
    """The report table's infection cells: their values (mL and %) as the page holds them."""
    out = {}
    for prefix in ("", "left.", "right."):
        for name in ("infection_volume_ml", "infection_percent"):
            cell = page.locator(f"#burden td[data-field='{prefix}{name}']")
            out[prefix + name] = json.loads(cell.get_attribute("data-value"))
            out[prefix + name + ":text"] = cell.inner_text()
    return out


def _shipped(report: dict) -> dict[str, float | None]:
    out = {}
    for prefix in ("", "left.", "right."):
        side = report[prefix[:-1]] if prefix else report
        out[prefix + "infection_volume_ml"] = side["infection_volume_ml"]
        out[prefix + "infection_percent"] = side["infection_percent"]
        out[prefix + "infection_volume_ml:text"] = f"{side['infection_volume_ml']:.1f} mL"
        out[prefix + "infection_percent:text"] = f"{side['infection_percent']:.2f} %"
    return out


def _recount(report: dict, labels: np.ndarray, levels: np.ndarray, t: float) -> dict:
    """What the page should show at threshold ``t``: probability >= t within the lungs."""
    infection = (labels & 1 > 0) & (levels >= probability_level(t))
    out = {}
    for prefix, on in (("", labels > 0), ("left.", labels & 4 > 0), ("right.", labels & 8 > 0)):
        side = report[prefix[:-1]] if prefix else report
        n = int((infection & on).sum())
        ml, pct = n * report["voxel_volume_ml"], 100 * n / side["lung_voxels"]
        out |= {
            prefix + "infection_volume_ml": ml,
            prefix + "infection_percent": pct,
            prefix + "infection_volume_ml:text": f"{ml:.1f} mL",
            prefix + "infection_percent:text": f"{pct:.2f} %",
        }
    return out


def _same(page_cells: dict, expected: dict) -> None:
    assert page_cells.keys() == expected.keys()
    for key, value in expected.items():
        got = page_cells[key]
        assert got == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key


def test_browser_threshold_slider_recounts_marks_and_resets(page, served, tmp_path):
    scan = _phantom(tmp_path / "slider.nii.gz", seed=3)
    page.set_input_files("#file-input", str(scan))
    job = shown_job(page, served)
    report = job["report"]
    page.wait_for_selector("#threshold:not([hidden])")
    labels, levels = _arrays(
        lambda url: page.request.get(served.url + url[1:]).body(), job["display"]
    )
    # At the shipped threshold: the report's own figures, no marker.
    assert float(page.input_value("#threshold-slider")) == report["threshold"]
    assert page.is_hidden("#threshold-marker")
    _same(_cells(page), _shipped(report))
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    shipped_view = page.locator("#view").screenshot()

    # Another threshold: one redraw, the recount of probability >= t in the lungs, marked.
    for t in (0.3, 0.45, 0.62):
        before = renders(page)
        timed(page, "input", "#threshold-slider", str(t))
        page.wait_for_timeout(150)
        assert renders(page) == before + 1
        expected = _recount(report, labels, levels, t)
        _same(_cells(page), expected)
        assert expected["infection_volume_ml"] != pytest.approx(report["infection_volume_ml"])
        if t > 0.3:  # the threshold cuts the lungs: a recount the test can tell apart
            assert 0 < expected["infection_volume_ml"] < report["lung_volume_ml"]
        marker = page.locator("#threshold-marker")
        assert (
            marker.is_visible() and marker.inner_text() == f"threshold {t} (not the shipped rule)"
        )
        assert "small components" in marker.get_attribute("title")
        assert page.get_attribute("#burden", "data-threshold") == str(t)
        if t == 0.3:  # a lower threshold: more infection drawn
            low_view = page.locator("#view").screenshot()
            assert (
                coloured_pixels(low_view)["infection"] > coloured_pixels(shipped_view)["infection"]
            )

    # Reset: the shipped threshold, masks and figures again.
    page.click("#threshold-reset")
    page.wait_for_selector("#threshold-marker", state="hidden")
    assert float(page.input_value("#threshold-slider")) == report["threshold"]
    _same(_cells(page), _shipped(report))
    assert page.is_disabled("#threshold-reset")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert coloured_pixels(page.locator("#view").screenshot()) == coloured_pixels(shipped_view)
    # Sliding back onto the shipped value is the shipped rule too.
    timed(page, "input", "#threshold-slider", "0.4")
    timed(page, "input", "#threshold-slider", str(report["threshold"]))
    assert page.is_hidden("#threshold-marker")
    _same(_cells(page), _shipped(report))
