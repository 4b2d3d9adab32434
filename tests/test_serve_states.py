"""The page of `covseg serve` stays consistent (headless Chromium): the highlighted case is the
one shown, failures are announced once, uploads of several files and of files with the same
name stay apart, and the small things a user trips over (the plot's marker, the orientation
letters, a picture's one-bar plot) behave."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from _serve_helpers import SHOWN, shown_job
from covseg.data.synthetic import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["_serve_fixtures"]  # the served, browser and page fixtures

AFFINE = np.diag([-0.8, -0.8, 5.0, 1.0])


def _phantom(path: Path, shape=(48, 48, 6), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(make_phantom(seed, shape)[0], AFFINE), str(path))
    return path


def _cut_short(path: Path) -> Path:
    """A gzip NIfTI whose header is fine and whose voxels are cut short (fails in the job)."""
    raw = gzip.decompress(_phantom(path.with_name("whole.nii.gz")).read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    return path


def _selected(page) -> str:
    return page.get_attribute("#cases li.selected", "data-job") or ""


def _errors(page) -> list[str]:
    return [e.inner_text() for e in page.locator(".error-text").all()]


def test_browser_a_failed_case_is_announced_once_and_never_shown_as_another(page, served, tmp_path):
    page.set_input_files("#file-input", str(_phantom(tmp_path / "good.nii.gz", seed=1)))
    good = shown_job(page, served)
    page.set_input_files("#file-input", str(_cut_short(tmp_path / "cut.nii.gz")))
    page.wait_for_selector(".error-text:has-text('cut.nii.gz')", timeout=120_000)
    failed = page.get_attribute("#cases li[data-state='failed']", "data-job")
    # The failure took the selection back to the case shown before; list, report and viewer agree.
    page.wait_for_selector(SHOWN)
    assert _selected(page) == good["id"] == page.get_attribute("body", "data-shown")
    assert page.get_attribute("#report", "data-job") == good["id"]
    # Choosing the failed case shows its failure, not the previous case's images.
    page.click(f"#cases li[data-job='{failed}']")
    assert _selected(page) == failed == page.get_attribute("#report", "data-job")
    assert page.get_attribute("body", "data-shown") == ""
    assert page.inner_text("#report-status-text").startswith("Failed: cut.nii.gz: ")
    assert page.inner_text("#viewer-message").startswith("Failed: cut.nii.gz: ")
    assert page.is_hidden("#report-body")
    page.click(f"#cases li[data-job='{good['id']}']")
    page.wait_for_selector(SHOWN)
    assert page.get_attribute("body", "data-shown") == good["id"] == _selected(page)
    # A reload lists the failure but does not announce it again.
    assert len([e for e in _errors(page) if "cut.nii.gz" in e]) == 1
    page.reload()
    page.wait_for_selector(f"#cases li[data-job='{failed}'][data-state='failed']")
    page.wait_for_timeout(1500)  # a few polls
    assert _errors(page) == []


def test_browser_several_files_select_the_first_and_same_names_stay_apart(page, served, tmp_path):
    first = _phantom(tmp_path / "a" / "same.nii.gz", (48, 48, 6), seed=2)
    second = _phantom(tmp_path / "b" / "same.nii.gz", (40, 40, 4), seed=3)
    seen, held = [], []

    def hold_second(route):  # the page sends the files in order
        seen.append(route)
        if len(seen) == 2:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r"/api/jobs\?name="), hold_second)
    page.set_input_files("#file-input", [str(first), str(second)])
    job = shown_job(page, served)  # the first file, its answer in while the second's is not
    assert job["report"]["shape"] == [48, 48, 6]
    assert len(held) == 1
    held[0].continue_()  # the second file's answer comes last: it does not take the selection
    page.wait_for_selector(
        "#cases li[data-state='done']:has-text('same.nii.gz (2)')", timeout=120_000
    )
    page.wait_for_timeout(600)
    assert page.get_attribute("body", "data-shown") == job["id"] == _selected(page)
    names = [n.inner_text() for n in page.locator("#cases .case-name").all()]
    assert names[:2] == ["same.nii.gz (2)", "same.nii.gz"]  # newest first
    assert page.inner_text("#report-title") == "same.nii.gz"
    page.click("#cases li:has-text('same.nii.gz (2)')")
    page.wait_for_selector(f"{SHOWN}:not([data-shown='{job['id']}'])")
    assert page.inner_text("#report-title") == "same.nii.gz (2)"


def test_browser_plot_marker_lets_clicks_through_and_letters_are_never_clipped(
    page, served, tmp_path
):
    page.set_viewport_size({"width": 1000, "height": 700})  # a narrow window
    page.set_input_files("#file-input", str(_phantom(tmp_path / "letters.nii.gz", (48, 48, 8))))
    shown_job(page, served)
    marker = page.locator("#plot-marker").bounding_box()
    x, y = marker["x"] + marker["width"] / 2, marker["y"] + marker["height"] / 2
    # What a click there reaches is the slice's column, not the marker drawn over it.
    under = page.evaluate(
        "([x, y]) => { const e = document.elementFromPoint(x, y); return [e.tagName, e.dataset.slice]; }",
        [x, y],
    )
    assert under == ["rect", page.get_attribute("#slice-info", "data-axial")]
    viewer = page.locator("#viewer").bounding_box()
    for view, letters in [("AXIAL", "RLAP"), ("ALL", "RLAPRLSIAPSI")]:
        page.click(f"button.view[data-view='{view}']")
        page.wait_for_selector(f"#viewer[data-view='{view}']")
        labels = page.locator(".pane-labels .orient").all()
        assert "".join(label.inner_text() for label in labels) == letters
        for label in labels:
            box = label.bounding_box()
            assert box["x"] >= viewer["x"] and box["y"] >= viewer["y"], label.inner_text()
            assert box["x"] + box["width"] <= viewer["x"] + viewer["width"], label.inner_text()
            assert box["y"] + box["height"] <= viewer["y"] + viewer["height"], label.inner_text()


def test_browser_a_picture_has_no_plot_along_the_scan_and_no_other_planes(page, served, tmp_path):
    pic = make_phantom(2, (40, 48, 1))[0][:, :, 0].T
    png = tmp_path / "slice.png"
    Image.fromarray((np.clip((pic + 1250) / 1500, 0, 1) * 255).astype(np.uint8)).save(png)
    page.set_input_files("#file-input", str(png))
    job = shown_job(page, served)
    assert job["display"]["shape"] == [1, 48, 40]
    assert page.is_hidden("#along") and page.is_visible("#burden")
    for view in ("CORONAL", "SAGITTAL", "ALL"):
        assert page.is_disabled(f"button.view[data-view='{view}']")
    assert page.is_disabled("#slice-slider") and page.is_disabled("#slice-number")
    assert page.is_disabled("#window option[value='lung']")
    assert page.input_value("#window") == "full"
    page.focus("#view")
    page.keyboard.press("v")  # nowhere to go
    assert page.get_attribute("#viewer", "data-view") == "AXIAL"
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    text = page.inner_text("#probe")
    assert "HU" not in text and "mm" not in text and text.split(",")[0].isdigit()


#: JS: drop a folder tree ``[[path, base64], ...]`` on the page as a browser hands a dropped
#: folder over (a directory entry whose reader answers in batches of two).
_DROP_FOLDER = """([name, files]) => {
    const folder = (name) => ({ name, isFile: false, isDirectory: true, children: [] });
    const root = folder(name);
    for (const [path, b64] of files) {
        const parts = path.split("/");
        let at = root;
        for (const part of parts.slice(0, -1)) {
            let sub = at.children.find((c) => c.name === part);
            if (!sub) at.children.push((sub = folder(part)));
            at = sub;
        }
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const file = new File([bytes], parts[parts.length - 1]);
        at.children.push({ name: file.name, isFile: true, isDirectory: false, file: (ok) => ok(file) });
    }
    const withReaders = (entry) => {
        if (entry.isFile) return entry;
        const children = entry.children.map(withReaders);
        entry.createReader = () => {
            let next = 0;
            return { readEntries: (ok) => ok(children.slice(next, (next += 2))) };
        };
        return entry;
    };
    const item = { kind: "file", webkitGetAsEntry: () => withReaders(root), getAsFile: () => null };
    const drop = new Event("drop", { bubbles: true, cancelable: true });
    Object.defineProperty(drop, "dataTransfer", { value: { items: [item], files: [] } });
    document.getElementById("drop").dispatchEvent(drop);
}"""


def test_browser_a_dicom_folder_dropped_or_chosen_is_segmented_as_its_series(
    page, served, checkpoint, tmp_path
):
    import base64
    import json

    from _dicom import hu_to_stored, write_dicom_series
    from covseg.cli import main

    hu = make_phantom(5, (48, 40, 6))[0]
    series = write_dicom_series(
        tmp_path / "ct_series", hu_to_stored(hu), [2.5 * k for k in range(6)]
    )
    out = tmp_path / "cli"
    assert main(["segment", str(series), "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    expected = json.loads((out / "ct_series_report.json").read_text())
    expected.pop("settings")  # the batch's record (covseg.cohort); the server runs no batch
    # Dropped: nested folders and operating-system litter, as a file manager hands them over.
    (series / "part2").mkdir()
    for path in sorted(series.glob("*.dcm"))[3:]:
        path.rename(series / "part2" / path.name)
    (series / ".DS_Store").write_bytes(b"junk")
    files = [
        (str(p.relative_to(series)), base64.b64encode(p.read_bytes()).decode())
        for p in sorted(series.rglob("*"))
        if p.is_file()
    ]
    page.evaluate(_DROP_FOLDER, ["ct_series", files])
    job = shown_job(page, served)
    assert job["name"] == "ct_series" and job["case"] == "ct_series"
    assert job["report"] == {**expected, "input": "ct_series"}
    assert page.inner_text("#report-title") == "ct_series"
    # Chosen with "Choose a folder…": the same series again.
    page.set_input_files("#folder-input", str(series))
    page.wait_for_selector(f"{SHOWN}:not([data-shown='{job['id']}'])", timeout=120_000)
    again = shown_job(page, served)
    assert again["report"] == job["report"] and page.inner_text("#report-title") == "ct_series (2)"
