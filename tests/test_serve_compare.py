"""The follow-up comparison of `covseg serve`: ``GET /api/compare`` gives the change of two done
cases (numbers checked by hand against their reports and masks) and what the page needs to keep
their slices at one physical position; in a real Chromium, the page shows both scans side by
side, the change table, and paging one scan moves the other to the same place."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _serve_helpers import SHOWN, coloured_pixels, wait_until
from covseg.data.synthetic import make_phantom

starlette = pytest.importorskip("starlette", reason="covseg[serve] is not installed")
from starlette.testclient import TestClient  # noqa: E402

from covseg.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["_serve_fixtures"]  # the served, browser and page fixtures

SHAPE = (64, 64, 12)
SLICE_MM = 5.0
#: The later scan starts two slices lower: its slice k + 2 is the earlier scan's slice k.
SHIFT = 2
OCTET = {"content-type": "application/octet-stream"}
VOXEL_ML = 0.8 * 0.8 * SLICE_MM / 1000


def _scan(path: Path, seed: int, z0: float = 0.0) -> Path:
    affine = np.diag([-0.8, -0.8, SLICE_MM, 1.0])
    affine[2, 3] = z0
    nib.save(nib.Nifti1Image(make_phantom(seed, SHAPE)[0], affine), str(path))
    return path


@pytest.fixture(scope="module")
def api(checkpoint, tmp_path_factory):
    """``(client, jobs)``: an app with the tiny checkpoint and three done cases: ``jan`` and
    ``feb`` (another phantom, two slices lower) and the picture ``pic``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve-root")
    files = tmp_path_factory.mktemp("scans")
    config = ServeConfig(checkpoint=str(checkpoint), max_upload_bytes=4 << 20, device="cpu")
    pic = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(pic, "PNG")
    uploads = {
        "jan.nii.gz": _scan(files / "jan.nii.gz", 0).read_bytes(),
        "feb.nii.gz": _scan(files / "feb.nii.gz", 1, -SHIFT * SLICE_MM).read_bytes(),
        "pic.png": pic.getvalue(),
    }
    with TestClient(create_app(config, root), base_url="http://127.0.0.1") as client:
        jobs = {}
        for name, data in uploads.items():
            r = client.post("/api/jobs", params={"name": name}, content=data, headers=OCTET)
            assert r.status_code == 202, r.text
            jobs[name.split(".")[0]] = r.json()["id"]

        def finished(job_id):
            job = client.get(f"/api/jobs/{job_id}").json()
            return job if job["state"] in ("done", "failed") else None

        jobs = {key: wait_until(lambda i=i: finished(i), timeout=120) for key, i in jobs.items()}
        assert all(j["state"] == "done" for j in jobs.values()), jobs
        yield client, jobs


def _mask(client, job: dict) -> np.ndarray:
    data = client.get(job["downloads"]["infection"]["url"]).content
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(image.dataobj) > 0


def test_compare_gives_the_change_by_hand_and_the_geometry_of_both(api):
    client, jobs = api
    jan, feb = jobs["jan"], jobs["feb"]
    r = client.get("/api/compare", params={"before": jan["id"], "after": feb["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    change = body["change"]
    assert (change["before"], change["after"]) == ("jan", "feb")
    for region, key in (("both", None), ("left", "left"), ("right", "right")):
        a, b = (j["report"][key] if key else j["report"] for j in (jan, feb))
        got = change["regions"][region]
        assert got["infection_ml"] == [a["infection_volume_ml"], b["infection_volume_ml"]]
        assert got["infection_change_ml"] == pytest.approx(
            b["infection_volume_ml"] - a["infection_volume_ml"], abs=1e-6
        )
        assert got["percent"] == [a["infection_percent"], b["infection_percent"]]
    # Voxel by voxel: feb's slice k + 2 lies where jan's slice k does (its origin is 10 mm lower).
    before, after = _mask(client, jan), _mask(client, feb)
    moved = np.zeros_like(after)
    moved[:, :, : SHAPE[2] - SHIFT] = after[:, :, SHIFT:]
    voxels = change["voxels"]
    assert voxels["new_ml"] == pytest.approx((moved & ~before).sum() * VOXEL_ML)
    assert voxels["resolved_ml"] == pytest.approx((before & ~moved).sum() * VOXEL_ML)
    assert voxels["persisting_ml"] == pytest.approx((before & moved).sum() * VOXEL_ML)
    assert before.any() and after.any()  # the counts above are not all zero
    # What the page maps slices with: both affines (feb 10 mm lower) and the identity.
    assert body["transform"] == np.eye(4).tolist() and body["registered"] is False
    za = np.asarray(body["before"]["display"]["affine"])[2, 3]
    zb = np.asarray(body["after"]["display"]["affine"])[2, 3]
    assert za - zb == pytest.approx(SHIFT * SLICE_MM)
    assert body["after"]["display"]["ct"] == feb["display"]["ct"]


def test_compare_refuses_unknown_same_and_picture_cases(api, monkeypatch):
    client, jobs = api
    jan, pic = jobs["jan"]["id"], jobs["pic"]["id"]
    r = client.get("/api/compare", params={"before": jan, "after": "nope"})
    assert r.status_code == 404 and r.json()["error"] == "compare two done cases"
    r = client.get("/api/compare", params={"before": jan, "after": jan})
    assert r.status_code == 400 and "two different cases" in r.json()["error"]
    r = client.get("/api/compare", params={"before": jan, "after": pic})
    assert (
        r.status_code == 400
        and r.json()["error"] == "pic: the report has no volumes (a picture has no voxel size)"
    )
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if not installed
    feb = jobs["feb"]["id"]
    r = client.get("/api/compare", params={"before": jan, "after": feb, "register": "1"})
    assert r.status_code == 400 and "registration needs SimpleITK" in r.json()["error"]


# ------------------------------------------------------------------------ in the browser
def _pick(page, before: str, after: str) -> None:
    """Choose two cases by name in the comparison controls and compare them."""
    for select, name in (("#compare-before", before), ("#compare-after", after)):
        page.wait_for_selector(f"{select} option:text-is('{name}')", state="attached")
        page.select_option(select, label=name)
    page.click("#compare-start")
    page.wait_for_selector("body.comparing[data-compared]", timeout=60_000)


def _sync(page) -> dict:
    """The slices (0-based) and z (mm) both scans show, and which scan the position leaves."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    d = page.eval_on_selector("#compare-sync", "e => ({...e.dataset})")
    return {
        "a": int(d["a"]),
        "b": int(d["b"]),
        "az": float(d["az"]),
        "bz": float(d["bz"]),
        "outside": d["outside"],
    }


def test_browser_compare_shows_both_scans_in_step_and_the_change(page, served, tmp_path):
    n = SHAPE[2]
    jan = _scan(tmp_path / "jan.nii.gz", 0)
    feb = _scan(tmp_path / "feb.nii.gz", 1, -SHIFT * SLICE_MM)  # two slices lower
    page.set_input_files("#file-input", [str(jan), str(feb)])

    def both_done():
        jobs = page.request.get(f"{served.url}api/jobs").json()["jobs"]
        done = {j["name"]: j for j in jobs if j["state"] == "done"}
        return done if {"jan.nii.gz", "feb.nii.gz"} <= set(done) else None

    by_name = wait_until(both_done, timeout=120)
    assert page.is_hidden("#viewer-b") and page.is_hidden("#compare-report")
    assert page.is_hidden("#compare-stop")
    _pick(page, "jan.nii.gz", "feb.nii.gz")
    page.wait_for_selector(SHOWN)
    assert page.get_attribute("body", "data-shown") == by_name["jan.nii.gz"]["id"]
    assert page.is_visible("#viewer-b") and page.is_visible("#compare-report")
    assert page.is_hidden("#report-body")  # the single case's report gives way to the change
    # The table: before, after and change of the infected mL and %, both lungs, left, right.
    for region, key in (("both", None), ("left", "left"), ("right", "right")):
        ra, rb = (by_name[f]["report"] for f in ("jan.nii.gz", "feb.nii.gz"))
        ra, rb = (r[key] if key else r for r in (ra, rb))
        for what, field in (("ml", "infection_volume_ml"), ("percent", "infection_percent")):
            cells = page.locator(
                f"#compare-table tr[data-region='{region}'][data-what='{what}'] td"
            )
            values = [float(cells.nth(i).get_attribute("data-value")) for i in range(3)]
            assert values[:2] == [ra[field], rb[field]], (region, what)
            assert values[2] == pytest.approx(rb[field] - ra[field], abs=1e-4), (region, what)
    # Both scans in step: the middle slice of A, the slice of B two higher, the same z.
    start = _sync(page)
    assert start["a"] == n // 2 and start["b"] == n // 2 + SHIFT and start["az"] == start["bz"]
    page.focus("#view")
    for key, a in (("ArrowUp", n // 2 + 1), ("Home", 0), ("ArrowUp", 1)):
        page.keyboard.press(key)
        now = _sync(page)
        assert (now["a"], now["outside"]) == (a, "") and now["az"] == a * SLICE_MM, key
        assert now["b"] == a + SHIFT and now["bz"] == now["az"], key
    # A's top slices lie above B's: B stays at its top slice and says so.
    for key, a, b, outside in (
        ("End", n - 1, n - 1, "B"),
        ("ArrowDown", n - 2, n - 1, "B"),
        ("ArrowDown", n - 3, n - 1, ""),
        ("End", n - 1, n - 1, "B"),
    ):
        page.keyboard.press(key)
        now = _sync(page)
        assert (now["a"], now["b"], now["outside"]) == (a, b, outside), key
        assert page.is_visible("#viewer-b .compare-outside") == bool(outside), key
    # The wheel over B pages B; A follows.
    box = page.locator("#viewer-b canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(4):
        page.mouse.wheel(0, 100)  # down: lower slices
    now = _sync(page)
    assert now["b"] == n - 5 and now["a"] == n - 5 - SHIFT and now["outside"] == ""
    assert page.is_hidden("#viewer-b .compare-outside")
    # B draws the scan with its masks, as A does.
    shot = coloured_pixels(page.locator("#viewer-b canvas").screenshot())
    assert shot["lungs"] > 0
    # Back to one scan: A alone, its report again.
    assert page.is_visible("#compare-stop")
    page.click("#compare-stop")
    assert page.is_hidden("#viewer-b") and page.is_visible("#report-body")
    assert page.is_hidden("#compare-stop") and page.is_hidden("#compare-report")
    assert page.get_attribute("body", "data-shown") == by_name["jan.nii.gz"]["id"]
