"""The HTML slice viewer: what the page holds (exact labels, radiological order, volumes) and, in a real
headless Chromium, that it loads from file:// without console errors, scrolls, and toggles classes."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from organseg.data.base import ArrayDataset, Volume
from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.errors import DataError
from organseg.imageio.orientation import radiological_orientation
from organseg.imageio.volumes import Geometry, read_image
from organseg.reporting.palette import class_color
from organseg.reporting.viewer import case_metric_cells, viewer_name, write_viewer

RAS = Geometry(spacing=(2.5, 0.8, 0.7), origin=(10.0, -5.0, 3.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))


def page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def unpack(packed: dict, shape) -> np.ndarray:
    dtype = np.uint8 if packed["dtype"] == "uint8" else np.dtype("<u2")
    return np.frombuffer(zlib.decompress(base64.b64decode(packed["zlib"])), dtype=dtype).reshape(shape)


def synthetic_case(shape=(6, 40, 50)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    image = ((x + 3 * y + 20 * z) % 97 / 96.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for k in range(d):
        label[k, 5 + k : 18 + k, 6:20] = 1
        label[k, 22:35, 25 + k : 40 + k] = 2
    truth = np.roll(label, 2, axis=2)
    return image, label, truth


def test_page_is_self_contained_and_holds_exact_oriented_labels(tmp_path: Path) -> None:
    from PIL import Image

    image, label, truth = synthetic_case()
    metrics = {"RV": {"DSC": 0.91, "HD95 (mm)": 2.5}, "Myo": {"DSC": None, "HD95 (mm)": float("nan")}}
    out = write_viewer(
        tmp_path / "v" / "case.html",
        image,
        label=label,
        truth=truth,
        geometry=RAS,
        class_names=ACDC_CLASSES,
        metrics=metrics,
        title="case </script> 1",
    )
    assert [p.name for p in out.parent.iterdir()] == ["case.html"]  # no temp file left behind
    text = out.read_text(encoding="utf-8")
    # nothing fetched from anywhere: no external script, style, font or link
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert "case &lt;/script&gt; 1" in text  # the title cannot break out of the markup
    data = page_data(out)
    o = radiological_orientation(RAS)
    shown = o.apply(label)
    assert data["shape"] == list(shown.shape) and data["radiological"] is True
    np.testing.assert_array_equal(unpack(data["label"], shown.shape), shown)
    np.testing.assert_array_equal(unpack(data["truth"], shown.shape), o.apply(truth))
    assert data["file_slice"] == [5, 4, 3, 2, 1, 0]  # superior first: RAS z runs up, so reversed
    assert data["spacing"] == [2.5, 0.8, 0.7]
    # each slice's JPEG is the windowed image of that displayed slice (lossy: a few grey levels off)
    assert len(data["images"]) == 6
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["images"][0].split(",", 1)[1]))))
    assert first.shape == (40, 50)
    assert np.abs(first.astype(float) - 255 * o.apply(image)[0]).mean() < 4
    voxel_ml = 2.5 * 0.8 * 0.7 / 1000
    rows = {c["name"]: c for c in data["classes"]}
    assert list(rows) == ["RV", "Myo"]  # LV is absent and has no metrics: not listed
    assert rows["RV"]["ml"]["label"] == pytest.approx(round((label == 1).sum() * voxel_ml, 2))
    assert rows["Myo"]["voxels"] == {"label": int((label == 2).sum()), "truth": int((truth == 2).sum())}
    assert rows["RV"]["color"] == "#" + "".join(f"{round(255 * v):02x}" for v in class_color(1))
    assert rows["RV"]["metrics"] == {"DSC": 0.91, "HD95 (mm)": 2.5}
    assert rows["Myo"]["metrics"] == {"DSC": None, "HD95 (mm)": None}


def test_missed_and_false_positive_organs_show_a_dash_not_a_score(tmp_path: Path) -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = 1  # RV: in the truth only (missed)
    truth[1, :2] = 3  # LV: in both (scored)
    pred = np.zeros_like(truth)
    pred[1, :2] = 3
    pred[0, 2:] = 2  # Myo: predicted, absent from the truth (false positive)
    reference = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # the reference protocol's edge values
    cells = case_metric_cells(pred, truth, ACDC_CLASSES, reference, "mm")
    assert cells == {
        "RV": {"DSC": 0.0, "HD95 (mm)": "\u2013 (missed)"},
        "Myo": {"DSC": "\u2013 (false positive)", "HD95 (mm)": "\u2013"},
        "LV": {"DSC": 1.0, "HD95 (mm)": 0.0},
    }
    assert case_metric_cells(pred, truth, [*ACDC_CLASSES, "extra"], np.zeros((4, 2)), "mm")["extra"] == {
        "DSC": "\u2013 (absent)",
        "HD95 (mm)": "\u2013 (absent)",
    }
    page = write_viewer(
        tmp_path / "c.html",
        truth.astype(np.float32),
        label=pred,
        truth=truth,
        class_names=ACDC_CLASSES,
        metrics=cells,
    )
    rows = {c["name"]: c["metrics"] for c in page_data(page)["classes"]}
    assert rows["RV"] == {"DSC": 0.0, "HD95 (mm)": "\u2013 (missed)"}  # the page shows the note as is


def test_no_geometry_keeps_array_order_and_large_volumes_are_subsampled(tmp_path: Path) -> None:
    image, label, _ = synthetic_case((6, 40, 50))
    data = page_data(write_viewer(tmp_path / "a.html", image, label=label, spacing=(2.0, 1.0, 1.0)))
    assert data["radiological"] is False and data["file_slice"] == list(range(6))
    np.testing.assert_array_equal(unpack(data["label"], label.shape), label)
    assert data["classes"][0]["name"] == "class 1" and data["note"] == ""
    small = page_data(
        write_viewer(tmp_path / "b.html", image, label=label, spacing=(2.0, 1.0, 1.0), max_voxels=6 * 20 * 25)
    )
    assert small["shape"] == [6, 20, 25] and "1 pixel in 2" in small["note"]
    np.testing.assert_array_equal(unpack(small["label"], (6, 20, 25)), label[:, ::2, ::2])
    assert small["spacing"] == [2.0, 2.0, 2.0]
    # the table is computed before subsampling
    assert small["classes"][0]["voxels"]["label"] == int((label == 1).sum())
    many = label.astype(np.int32) * 150  # ids up to 300: stored as 16-bit
    wide = page_data(write_viewer(tmp_path / "d.html", image, label=many, truth=label > 0))
    assert wide["label"]["dtype"] == "uint16" and wide["truth"]["dtype"] == "uint8"
    np.testing.assert_array_equal(unpack(wide["label"], label.shape), many)
    assert [c["index"] for c in wide["classes"]] == [1, 150, 300]
    tiny = page_data(write_viewer(tmp_path / "c.html", image, max_voxels=3 * 10 * 13))
    assert tiny["shape"] == [3, 10, 13] and "1 slice in 2" in tiny["note"] and tiny["label"] is None


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    image, label, _ = synthetic_case()
    with pytest.raises(DataError, match=r"bad\.html: label shape \(6, 40, 49\) differs"):
        write_viewer(tmp_path / "bad.html", image, label=label[:, :, :49])
    with pytest.raises(DataError, match="non-negative integer class ids"):
        write_viewer(tmp_path / "bad.html", image, truth=label.astype(np.float32))
    with pytest.raises(DataError, match=r"\(D, H, W\) image"):
        write_viewer(tmp_path / "bad.html", image[0])
    assert not list(tmp_path.iterdir())
    assert viewer_name("../x/y") == "_x_y.html" and viewer_name("case0001") == "case0001.html"


def test_organseg_test_writes_a_viewer_per_case(tmp_path: Path) -> None:
    from helpers import make_run
    from organseg.evaluation.tester import run_test

    rng = np.random.default_rng(0)
    meta = {"origin": (1.0, 2.0, 3.0), "direction": RAS.direction}
    vols = [
        Volume(
            f"case{i}",
            rng.random((3, 40, 48)).astype(np.float32),
            rng.integers(0, 4, (3, 40, 48)),
            (2.5, 0.8, 0.7),
            meta,
        )
        for i in range(2)
    ]
    ds = ArrayDataset([], {"test": vols}, class_names=ACDC_CLASSES)
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    res = Path(run_test(run, data=ds, checkpoint="last", device="cpu", progress=False)["results_dir"])
    per_case = json.loads((res / "per_case.json").read_text())
    for i, entry in enumerate(per_case):
        data = page_data(res / "viewer" / f"case{i}.html")
        shown = radiological_orientation(RAS).apply(vols[i].label)
        np.testing.assert_array_equal(unpack(data["truth"], shown.shape), shown)
        dsc = {c["name"]: c["metrics"]["DSC"] for c in data["classes"]}
        assert dsc == {n: pytest.approx(entry["classes"][n]["reference"]["dice"]) for n in ACDC_CLASSES[1:]}
    report = (run / "report.md").read_text()
    assert "[case0](results/test_last/viewer/case0.html)" in report
    run_test(run, data=ds, checkpoint="last", device="cpu", progress=False, viewer=False, out=tmp_path / "o")
    assert not (tmp_path / "o" / "viewer").exists()


# ---------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install 'organseg[test]')"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if not chromium or not driver_exe:
        pytest.skip("chromium / chromedriver not found (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="organseg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_exe), options=options)  # never downloads a driver
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> None:
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 20
    while driver.execute_script("return document.body.dataset.ready") != "1":
        error = driver.execute_script("return document.getElementById('error').textContent")
        assert not error, error
        assert time.monotonic() < deadline, "the page never became ready"
        time.sleep(0.05)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors


PIXELS_JS = """
const c = document.getElementById('view'), px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const [r, g, b] = arguments[0];
let hits = 0, sum = 0;
for (let i = 0; i < px.length; i += 4) {
  if (px[i] === r && px[i + 1] === g && px[i + 2] === b) hits++;
  sum = (sum * 31 + px[i] + 7 * px[i + 1] + 13 * px[i + 2]) % 1000000007;
}
return [hits, sum, c.dataset.slice, document.getElementById('slice-index').textContent];
"""


def set_range(driver, element_id: str, value: int) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = String(arguments[1]);"
        "e.dispatchEvent(new Event('input'));",
        element_id,
        value,
    )


def rgb(index: int) -> list[int]:
    return [round(255 * v) for v in class_color(index)]


def test_browser_scrolls_and_toggles_classes(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image, label, truth = synthetic_case()
    page = write_viewer(
        tmp_path / "case.html",
        image,
        label=label,
        truth=truth,
        geometry=RAS,
        class_names=ACDC_CLASSES,
        metrics={"RV": {"DSC": 0.9}},
        title="synthetic",
    )
    open_page(browser, page)
    assert browser.title == "synthetic"
    assert browser.find_element(By.ID, "truth-toggle").is_displayed()
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#classes td.name")]
    assert names == ["RV", "Myo"]
    _, sum_mid, z_mid, text_mid = browser.execute_script(PIXELS_JS, rgb(1))
    assert z_mid == "3" and text_mid.startswith("slice 4 / 6")  # opens on the middle slice
    set_range(browser, "slice", 1)
    _, sum_1, z_1, text_1 = browser.execute_script(PIXELS_JS, rgb(1))
    assert text_1 == "slice 2 / 6 (file slice 4)"  # organseg.formatting.slice_caption, as in the report
    assert z_1 == "1" and sum_1 != sum_mid
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    assert browser.execute_script(PIXELS_JS, rgb(1))[2] == "2"
    browser.execute_script(
        "document.getElementById('view').dispatchEvent("
        "new WheelEvent('wheel', {deltaY: 100, bubbles: true, cancelable: true}))"
    )
    assert browser.execute_script(PIXELS_JS, rgb(1))[2] == "3"
    # full opacity, no outline: the prediction is painted in the classes' exact colours
    set_range(browser, "opacity", 100)
    browser.find_element(By.ID, "show-truth").click()
    rv_on, _, _, _ = browser.execute_script(PIXELS_JS, rgb(1))
    myo_on, _, _, _ = browser.execute_script(PIXELS_JS, rgb(2))
    assert rv_on == int((label[2] == 1).sum()) and myo_on == int((label[2] == 2).sum())  # display slice 3
    browser.find_element(By.CSS_SELECTOR, ".class-toggle[data-index='1']").click()
    assert browser.execute_script(PIXELS_JS, rgb(1))[0] == 0  # RV hidden
    assert browser.execute_script(PIXELS_JS, rgb(2))[0] == myo_on  # Myo still there
    browser.find_element(By.CSS_SELECTOR, ".class-toggle[data-index='1']").click()
    assert browser.execute_script(PIXELS_JS, rgb(1))[0] == rv_on
    # the truth outline: switched on, it adds class-coloured pixels where the shifted truth has edges
    browser.find_element(By.ID, "show-pred").click()
    assert browser.execute_script(PIXELS_JS, rgb(1))[0] == 0
    browser.find_element(By.ID, "show-truth").click()
    assert 0 < browser.execute_script(PIXELS_JS, rgb(1))[0] < int((truth[2] == 1).sum())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors


def test_browser_real_ct(browser, tmp_path: Path, totalseg_dir: Path) -> None:
    """The real CT with TotalSegmentator's labels (Synapse organs): the page loads cleanly and the liver, in
    the patient's right, is painted on the viewer's left half."""
    ct, geom = read_image(totalseg_dir / "example_ct_sm.nii.gz")
    seg, _ = read_image(totalseg_dir / "example_seg.nii.gz")
    lut = np.zeros(256, np.uint8)
    for ts, syn in {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}.items():  # TotalSegmentator -> Synapse
        lut[ts] = syn
    labels = lut[seg]
    page = write_viewer(
        tmp_path / "ct.html",
        ct,
        label=labels,
        geometry=geom,
        class_names=SYNAPSE_CLASSES,
        window=(-125, 275),
        title="example_ct_sm",
    )
    open_page(browser, page)
    from selenium.webdriver.common.by import By

    assert not browser.find_element(By.ID, "truth-toggle").is_displayed()  # a prediction without truth
    set_range(browser, "opacity", 100)
    liver = browser.execute_script(
        """
const c = document.getElementById('view'), w = c.width;
const px = c.getContext('2d').getImageData(0, 0, w, c.height).data, [r, g, b] = arguments[0];
let left = 0, right = 0;
for (let i = 0; i < px.length; i += 4) {
  if (px[i] === r && px[i + 1] === g && px[i + 2] === b) { if ((i / 4) % w < w / 2) left++; else right++; }
}
return [left, right];
""",
        rgb(5),
    )
    assert liver[0] > 4 * liver[1], liver  # the left lobe reaches across the midline
