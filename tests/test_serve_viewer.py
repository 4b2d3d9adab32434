"""The viewer of `covseg serve` in a real headless Chromium: paging with keys, slider and number
in every view, a toolbar that shows what is drawn, a page that stays usable while a scan loads,
one redraw per change, and the latencies a user without a GPU sees on a 31-slice scan: first
image, toggles, window, slice steps, threshold slider, comparison of two cases (written to
``viewer_latency.json`` in the test's folder, printed, and merged into $COVSEG_VIEWER_TIMINGS)."""

from __future__ import annotations

import base64
import json
import os
from io import BytesIO
from pathlib import Path
from statistics import median

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from _serve_helpers import SHOWN, coloured_pixels, renders, shown_job, timed, wait_until
from covseg.data.geometry import canonical_view
from covseg.data.io import read_image
from covseg.data.synthetic import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["_serve_fixtures"]  # the served, browser and page fixtures

AFFINE = np.diag([-0.8, -0.8, 5.0, 1.0])
MAX_UPLOAD_MB = 64  # the server's limit: a 512 x 512 x 31 scan


def _phantom(path: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    nib.save(nib.Nifti1Image(make_phantom(seed, shape)[0], AFFINE), str(path))
    return path


def _show(page, served, scan: Path) -> dict:
    page.set_input_files("#file-input", str(scan))
    return shown_job(page, served)


def _drawn(page) -> None:
    """Wait until the viewer has drawn what its state says (no redraw pending)."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _where(page) -> dict[str, int]:
    """The slice shown per plane (0-based), as the read-out under the viewer says."""
    return {
        p: int(page.get_attribute("#slice-info", f"data-{p}"))
        for p in ("axial", "coronal", "sagittal")
    }


def _toolbar(page) -> tuple[str, int, int, int]:
    """(plane named by the slice control, slider value, its maximum, number box value)."""
    return (
        page.inner_text("#slice-plane"),
        int(page.input_value("#slice-slider")),
        int(page.get_attribute("#slice-slider", "max")),
        int(page.input_value("#slice-number")),
    )


def test_browser_keys_slider_and_number_page_through_the_active_view(page, served, tmp_path):
    n, side = 24, 48
    _show(page, served, _phantom(tmp_path / "keys.nii.gz", (side, side, n), seed=3))
    assert _where(page) == {"axial": 12, "coronal": 24, "sagittal": 24}  # the middle
    page.focus("#view")
    for key, axial in [
        ("ArrowUp", 13),
        ("ArrowDown", 12),
        ("ArrowDown", 11),
        ("PageUp", 21),
        ("PageUp", 23),  # no further than the last slice
        ("PageDown", 13),
        ("Home", 0),
        ("End", n - 1),
    ]:
        page.keyboard.press(key)
        assert _where(page)["axial"] == axial, key
        assert _toolbar(page) == ("Axial", axial + 1, n, axial + 1), key
        _drawn(page)
        assert page.inner_text(".pane-title[data-plane='axial']") == f"Axial {axial + 1} / {n}"
    # The report's plot marks the slice shown.
    marker = float(page.get_attribute("#plot-marker", "x1"))
    bar = page.locator(f"#plot rect.hit[data-slice='{n - 1}']")
    x, width = float(bar.get_attribute("x")), float(bar.get_attribute("width"))
    assert x < marker < x + width
    top = page.locator("#view").screenshot()
    page.keyboard.press("Home")
    _drawn(page)
    assert page.locator("#view").screenshot() != top  # another slice is drawn

    # Coronal: the same keys move the coronal slice, the axial one stays.
    page.click("button.view[data-view='CORONAL']")
    page.focus("#view")
    page.keyboard.press("ArrowUp")
    assert _where(page) == {"axial": 0, "coronal": 25, "sagittal": 24}
    assert _toolbar(page) == ("Coronal", 26, side, 26)
    # The slider moves by one with its own arrow keys (the page's keys leave fields alone).
    page.focus("#slice-slider")
    page.keyboard.press("ArrowRight")
    assert _where(page)["coronal"] == 26
    page.fill("#slice-number", "5")
    page.press("#slice-number", "Enter")
    assert _where(page)["coronal"] == 4 and _toolbar(page) == ("Coronal", 5, side, 5)
    # The wheel moves the plane under the pointer: sagittal in the "All" view.
    page.click("button.view[data-view='ALL']")
    _drawn(page)
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 4, box["y"] + box["height"] * 3 / 4)
    page.mouse.wheel(0, -100)
    assert _where(page) == {"axial": 0, "coronal": 4, "sagittal": 25}
    assert _toolbar(page)[0] == "Sagittal"
    info = page.inner_text("#slice-info")
    assert (
        f"Axial 1 / {n}" in info
        and f"Coronal 5 / {side}" in info
        and f"Sagittal 26 / {side}" in info
    )


def _drawn_aspect(page) -> float:
    """Width / height of what the canvas shows (its non-black pixels; one pane)."""
    return page.evaluate(
        """() => {
            const c = document.getElementById("view");
            const { data, width, height } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
            let [x0, x1, y0, y1] = [width, -1, height, -1];
            for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
                const i = 4 * (y * width + x);
                if (data[i] + data[i + 1] + data[i + 2] > 30) {
                    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
                }
            }
            return (x1 - x0 + 1) / (y1 - y0 + 1);
        }"""
    )


def test_browser_toolbar_shows_the_view_drawn_whatever_key_changed_it(page, served, tmp_path):
    _show(page, served, _phantom(tmp_path / "views.nii.gz", (40, 40, 4), seed=4))
    page.focus("#view")
    aspect = {}
    for expected in ["CORONAL", "SAGITTAL", "ALL", "AXIAL"]:
        page.keyboard.press("v")  # once switched the former viewer behind the toolbar's back
        _drawn(page)
        assert page.get_attribute("#viewer", "data-view") == expected
        active = page.locator("button.view.active")
        assert active.count() == 1 and active.get_attribute("data-view") == expected
        planes = {p.get_attribute("data-plane") for p in page.locator(".pane-title").all()}
        assert len(planes) == (3 if expected == "ALL" else 1)
        aspect[expected] = _drawn_aspect(page)
    # What is drawn is that view: 40 x 40 px of 0.8 mm, 4 slices of 5 mm.
    assert aspect["AXIAL"] == pytest.approx(1.0, rel=0.05)
    assert aspect["CORONAL"] == pytest.approx(32 / 20, rel=0.05)
    assert aspect["SAGITTAL"] == pytest.approx(32 / 20, rel=0.05)


def test_browser_page_stays_usable_while_a_scan_loads_and_draws_once_per_change(
    page, served, tmp_path
):
    held = []
    page.route("**/view/ct.raw", lambda route: held.append(route))
    page.set_input_files("#file-input", str(_phantom(tmp_path / "slow.nii.gz", (48, 48, 8))))
    page.wait_for_selector("#viewer-loading:not([hidden])", timeout=120_000)
    assert page.inner_text("#loading-text") == "Loading slow.nii.gz…"
    # Meanwhile: the report is there, the toolbar answers, the page runs its scripts.
    assert page.is_visible("#report-body") and page.inner_text("#report-title") == "slow.nii.gz"
    page.click("button.view[data-view='CORONAL']")
    assert page.locator("button.view.active").get_attribute("data-view") == "CORONAL"
    assert (
        page.evaluate(
            "() => new Promise((r) => { const t = performance.now(); setTimeout(() => r(performance.now() - t), 0); })"
        )
        < 250
    )
    assert page.get_attribute("body", "data-shown") == ""
    held[0].continue_()
    page.wait_for_selector(SHOWN)
    assert page.is_hidden("#viewer-loading")
    assert page.get_attribute("#viewer", "data-view") == "CORONAL"  # the choice made meanwhile
    # Each change draws the canvas once.
    _drawn(page)
    for what, selector, value in [
        ("click", "#show-infection", ""),
        ("click", "#show-infection", ""),
        ("input", "#opacity-lungs", "80"),
        ("click", "#show-lungs", ""),
        ("change", "#ww", "400"),
        ("change", "#window", "mediastinum"),
        ("key", "#view", "ArrowUp"),
        ("click", "button.view[data-view='AXIAL']", ""),
    ]:
        before = renders(page)
        timed(page, what, selector, value)
        page.wait_for_timeout(150)
        assert renders(page) == before + 1, (what, selector)


LATENCY_SHAPES = [
    pytest.param((128, 128, 31), id="128x128x31"),
    pytest.param((512, 512, 31), id="512x512x31", marks=pytest.mark.slow),
]
#: Where the latency test also merges its figures (``{scan: figures}``), if set.
TIMINGS_ENV = "COVSEG_VIEWER_TIMINGS"

#: JS: drop a file ``[base64, name]`` on the page; the page's clock at the drop.
_DROP = """([b64, name]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name));
    const t = performance.now();
    document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
    return t;
}"""

#: JS: press Compare; the milliseconds until the second viewer has drawn the later scan (the
#: earlier one is the scan already shown), and of those, the server's answer to /api/compare
#: (resource timing). Its box may draw empty first as it appears, so the draw counted is the
#: first one after the comparison says both are loaded.
_COMPARE = """async () => {
    const box = document.getElementById("viewer-b");
    performance.clearResourceTimings(); // the page's polls may have filled the buffer (250)
    const t0 = performance.now();
    let loaded = null;
    const drawn = new Promise((resolve) => {
        const watch = new MutationObserver(() => {
            const renders = Number(box.dataset.renders || 0);
            if (loaded === null && document.body.dataset.compared) loaded = renders;
            if (loaded !== null && renders > loaded) { watch.disconnect(); resolve(); }
        });
        const options = { attributes: true, attributeFilter: ["data-renders", "data-compared"] };
        watch.observe(box, options);
        watch.observe(document.body, options);
    });
    document.getElementById("compare-start").click();
    await drawn;
    const total = performance.now() - t0;
    const api = performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/compare?") && e.startTime >= t0);
    return [total, api.length ? api[api.length - 1].duration : null];
}"""


def _ms(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def _threshold_moves(page, shipped: float) -> list[float]:
    """Move the threshold slider to three other values: ms until the burden table is recounted
    and the overlay redrawn (one pass over the whole volume, one draw); back to the shipped one."""
    page.wait_for_selector("#threshold:not([hidden])")
    times = []
    for t in (t for t in ("0.3", "0.6", "0.45") if abs(float(t) - shipped) > 1e-6):
        times.append(timed(page, "input", "#threshold-slider", t))
        assert page.get_attribute("#burden", "data-threshold") == t  # the table is the recount
    timed(page, "click", "#threshold-reset")
    return times


def _compare(page, served, scan: Path, earlier: str) -> dict[str, list[float]]:
    """Segment ``scan`` too (through the API, so the page keeps showing job ``earlier``), compare
    the two; ms until both are drawn, then ms per slice step with both shown (both redrawn)."""
    r = page.request.post(
        f"{served.url}api/jobs?name={scan.name}",
        data=scan.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status == 202, r.text()
    later = r.json()["id"]

    def done():
        job = page.request.get(f"{served.url}api/jobs/{later}").json()
        assert job["state"] != "failed", job["error"]
        return job["state"] == "done"

    wait_until(done, timeout=900, step=0.5)
    for select, job_id in (("#compare-before", earlier), ("#compare-after", later)):
        page.wait_for_selector(f"{select} option[value='{job_id}']", state="attached")
        page.select_option(select, value=job_id)
    shown, api = page.evaluate(_COMPARE)
    assert page.get_attribute("body", "data-compared") == f"{earlier}:{later}"
    _drawn(page)
    both = ("viewer", "viewer-b")
    steps = [timed(page, "key", "#view", key, boxes=both) for key in ("ArrowUp", "ArrowDown")]
    return {
        "compare_to_both_drawn_ms": [round(shown, 1)],
        "compare_api_ms": [round(api, 1)],
        "compare_slice_step_ms": _ms(steps),
    }


def _record(figures: dict, folder: Path) -> None:
    """Write the figures beside the test, print them, and merge them into $COVSEG_VIEWER_TIMINGS."""
    text = json.dumps(figures, indent=2)
    (folder / "viewer_latency.json").write_text(text)
    print(f"\nviewer latency ({folder / 'viewer_latency.json'}):\n{text}")
    if target := os.environ.get(TIMINGS_ENV):
        path = Path(target)
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged[figures["scan"]] = figures
        path.write_text(json.dumps(merged, indent=2))


def _ratios(f: dict) -> dict[str, float]:
    """Each change against references measured in the same run: the plain redraw (an overlay
    toggle) and the first image after the job (load + first draw)."""
    toggle, first = median(f["overlay_toggle_ms"]), 1000 * f["finished_to_image_s"]
    return {
        "threshold_move_vs_toggle": round(median(f["threshold_move_ms"]) / toggle, 2),
        "threshold_move_vs_first_image": round(median(f["threshold_move_ms"]) / first, 3),
        "window_change_vs_toggle": round(median(f["window_change_ms"]) / toggle, 2),
        "compare_vs_first_image": round(f["compare_to_both_drawn_ms"][0] / first, 2),
        "compare_api_share": round(f["compare_api_ms"][0] / f["compare_to_both_drawn_ms"][0], 2),
        "compare_slice_step_vs_slice_step": round(
            median(f["compare_slice_step_ms"]) / median(f["slice_step_ms"]), 2
        ),
    }


@pytest.mark.parametrize("shape", LATENCY_SHAPES)
def test_browser_a_31_slice_scan_is_usable_within_5_s_of_its_job_finishing(
    page, served, tmp_path, shape
):
    """The figures go to ``viewer_latency.json`` (and $COVSEG_VIEWER_TIMINGS); only the issue's
    5 s to the first image and 1 s per change are asserted, generous on a loaded machine."""
    scan = _phantom(tmp_path / "latency.nii.gz", shape, seed=5)
    page.evaluate(
        """() => new PerformanceObserver((list) => {
            window.longTasks = (window.longTasks || []).concat(list.getEntries().map((e) => [e.startTime, e.duration]));
        }).observe({ type: "longtask" })"""
    )
    dropped = page.evaluate(_DROP, [base64.b64encode(scan.read_bytes()).decode(), scan.name])
    job = shown_job(page, served, timeout=900)
    marks = page.evaluate(
        """(id) => ({
            origin: performance.timeOrigin,
            seen: performance.getEntriesByName(`covseg:done:${id}`)[0].startTime,
            image: performance.getEntriesByType("mark").filter((m) => m.name === "covseg:image" && m.detail.job === id)[0].startTime,
        })""",
        job["id"],
    )
    finished = job["finished"] * 1000 - marks["origin"]  # on the page's clock
    _drawn(page)
    toggles = [timed(page, "click", "#show-infection") for _ in range(4)]
    draw_ms = float(page.get_attribute("#viewer", "data-render-ms"))  # the last toggle's draw
    windows = [timed(page, "change", "#ww", str(w)) for w in (400, 1500)]
    steps = [timed(page, "key", "#view", key) for key in ("ArrowUp", "ArrowDown", "PageUp")]
    views = [timed(page, "click", f"button.view[data-view='{v}']") for v in ("ALL", "AXIAL")]
    thresholds = _threshold_moves(page, job["report"]["threshold"])
    long_tasks = page.evaluate("() => (window.longTasks || [])")
    after = [d for t, d in long_tasks if t >= finished]
    figures = {
        "scan": "x".join(map(str, shape)),
        "job_s": job["seconds"],
        "drop_to_image_s": round((marks["image"] - dropped) / 1000, 3),
        "finished_to_image_s": round((marks["image"] - finished) / 1000, 3),
        "finished_to_page_knows_s": round((marks["seen"] - finished) / 1000, 3),
        "overlay_toggle_ms": _ms(toggles),
        "draw_ms": draw_ms,
        "window_change_ms": _ms(windows),
        "slice_step_ms": _ms(steps),
        "view_change_ms": _ms(views),
        "threshold_move_ms": _ms(thresholds),
        "longest_task_after_finish_ms": round(max(after, default=0), 1),
    }
    later = _phantom(tmp_path / "latency_later.nii.gz", shape, seed=6)
    figures |= _compare(page, served, later, earlier=job["id"])
    figures["ratios"] = _ratios(figures)
    figures["renderer"] = "2-D canvas, Chromium --disable-gpu (software)"
    _record(figures, tmp_path)
    assert figures["finished_to_image_s"] < 5, figures
    assert max(toggles + windows + steps) < 1000, figures


# ------------------------------------------------------------- window/level, read-outs, tools
def _probe(page, x: float, y: float) -> dict | None:
    """Move the pointer to canvas point (x, y); what the read-out says is under it."""
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    probe = page.locator("#probe")
    if probe.get_attribute("data-value") is None:
        return None
    keys = ("value", "k", "h", "w", "label")
    return {key: float(probe.get_attribute(f"data-{key}")) for key in keys} | {
        "text": probe.inner_text()
    }


def _steady(page, x: float, y: float) -> tuple[float, float, dict]:
    """A point near (x, y) well inside one voxel (its neighbours 2 px away name the same)."""
    for dx in (0, 3, -3, 5):
        here = _probe(page, x + dx, y + dx)
        around = [_probe(page, x + dx + ex, y + dx + ey) for ex, ey in ((-2, -2), (2, 2))]
        if here and all(a and (a["h"], a["w"]) == (here["h"], here["w"]) for a in around):
            _probe(page, x + dx, y + dx)
            return x + dx, y + dx, here
    raise AssertionError(f"no steady point near {(x, y)}")


def _pixel(page, x: float, y: float) -> tuple[int, int, int]:
    """The canvas colour at CSS point (x, y) (device pixel ratio 1)."""
    return tuple(
        page.evaluate(
            """([x, y]) => Array.from(document.getElementById("view").getContext("2d")
                .getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3))""",
            [x, y],
        )
    )


def _measurements(page) -> list[dict]:
    return [
        {
            "type": li.get_attribute("data-type"),
            "value": float(li.get_attribute("data-value")),
            "mean": li.get_attribute("data-mean"),
            "text": li.inner_text(),
        }
        for li in page.locator("#measurements li").all()
    ]


def test_browser_window_level_value_under_the_pointer_distance_area_and_png(page, served, tmp_path):
    scan = _phantom(tmp_path / "tools.nii.gz", (64, 64, 6), seed=6)
    image = read_image(scan)
    hu = canonical_view(image.array, image)
    job = _show(page, served, scan)
    k = job["display"]["shape"][0] // 2
    page.uncheck("#show-lungs")
    page.uncheck("#show-infection")
    box = page.locator("#view").bounding_box()
    w, h = box["width"], box["height"]
    # The value under the pointer is the scan's, in HU, at the voxel the read-out names.
    points = [_steady(page, w * fx, h * fy) for fx, fy in ((0.33, 0.4), (0.6, 0.62), (0.45, 0.3))]
    for _, _, p in points:
        assert p["k"] == k and p["value"] == hu[k, int(p["h"]), int(p["w"])]
        assert f"{int(p['value'])} HU" in p["text"]
    # Typed window/level: each voxel's grey is its value through that window.
    page.fill("#ww", "300")
    page.press("#ww", "Enter")
    page.fill("#wl", "-200")
    page.press("#wl", "Enter")
    _drawn(page)
    assert page.input_value("#window") == "custom"
    for x, y, p in points:
        grey = int(np.clip(round((p["value"] - (-200 - 150)) * 255 / 300), 0, 255))
        r, g, b = _pixel(page, x, y)
        assert r == g == b and abs(r - grey) <= 1, (p, (r, g, b), grey)
    # Dragging: right (wider) and down (higher level), with the W/L tool or the right button.
    per = (hu.max() - hu.min()) / 1000
    page.click("button.tool[data-tool='window']")
    x, y = w * 0.5, h * 0.5
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down()
    page.mouse.move(box["x"] + x + 40, box["y"] + y + 25, steps=4)
    page.mouse.up()
    assert float(page.input_value("#ww")) == pytest.approx(300 + 80 * per, abs=0.1)
    assert float(page.input_value("#wl")) == pytest.approx(-200 + 25 * per, abs=0.1)
    page.click("button.tool[data-tool='crosshair']")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + x - 40, box["y"] + y - 25, steps=4)
    page.mouse.up(button="right")
    assert float(page.input_value("#ww")) == pytest.approx(300, abs=0.1)
    page.select_option("#window", "lung")
    assert (page.input_value("#ww"), page.input_value("#wl")) == ("1500", "-600")

    # Distance: between two voxels' points, 0.8 mm pixels.
    (x1, y1, p1), (x2, y2, p2) = points[:2]
    page.click("button.tool[data-tool='distance']")
    page.mouse.move(box["x"] + x1, box["y"] + y1)
    page.mouse.down()
    page.mouse.move(box["x"] + x2, box["y"] + y2, steps=5)
    page.mouse.up()
    [distance] = _measurements(page)
    expected = 0.8 * np.hypot(p2["w"] - p1["w"], p2["h"] - p1["h"])
    assert distance["type"] == "distance" and abs(distance["value"] - expected) < 0.8 * 1.5
    assert f"{distance['value']:.1f} mm" in distance["text"]
    # Area: a rectangle dragged around, in cm², with the mean HU of the voxels inside.
    page.click("button.tool[data-tool='area']")
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    page.mouse.move(box["x"] + x1, box["y"] + y1)
    page.mouse.down()
    for cx, cy in corners[1:] + corners[:1]:
        page.mouse.move(box["x"] + cx, box["y"] + cy, steps=3)
    page.mouse.up()
    area = _measurements(page)[1]
    (h0, h1), (w0, w1) = sorted((int(p1["h"]), int(p2["h"]))), sorted((int(p1["w"]), int(p2["w"])))
    assert (
        (h1 - h0 - 1) * (w1 - w0 - 1) * 0.64
        <= area["value"]
        <= (h1 - h0 + 1) * (w1 - w0 + 1) * 0.64
    )
    inner, outer = hu[k, h0 + 1 : h1, w0 + 1 : w1].mean(), hu[k, h0 : h1 + 1, w0 : w1 + 1].mean()
    assert min(inner, outer) - 5 <= float(area["mean"]) <= max(inner, outer) + 5
    assert f"{area['value'] / 100:.2f} cm²" in area["text"] and "HU" in area["text"]
    # Measurements belong to their slice: another slice does not show them, the list keeps them.
    page.focus("#view")
    page.keyboard.press("ArrowUp")
    assert len(_measurements(page)) == 2

    # Save the view: the canvas as drawn, named after the case, plane and slice.
    page.check("#show-infection")
    page.keyboard.press("ArrowDown")
    _drawn(page)
    with page.expect_download() as info:
        page.click("#save-png")
    download = info.value
    assert download.suggested_filename == f"tools_axial_{k + 1}.png"
    png = Path(download.path()).read_bytes()
    picture = Image.open(BytesIO(png))
    size = page.evaluate(
        "() => [document.getElementById('view').width, document.getElementById('view').height]"
    )
    assert list(picture.size) == size
    assert coloured_pixels(png)["infection"] > 100
    assert coloured_pixels(png) == coloured_pixels(page.locator("#view").screenshot())
