"""Human evaluation: `cmav human-eval make` on tiny runs, the rating page, ratings validation, analysis."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmav.human_eval import HumanEvalError, load_manifest, rater_order
from cmav.human_eval.analysis import holm, krippendorff_ordinal, wilcoxon_paired
from cmav.human_eval.build import make_study
from cmav.human_eval.page import ORDER_JS, print_sheet, script_json
from cmav.human_eval.ratings import load_ratings
from cmav.human_eval.report import md, run_analysis
from cmav.human_eval.study import (
    DEFAULT_QUESTIONS,
    Question,
    load_questions,
    manifest_fingerprint,
    rater_id_problem,
    sample_pairs,
    sha256_file,
)

from fixtures import make_paired, make_suburmp

SIZE = 32
EVIL = "<img src=x onerror=alert(1)>"
NODE = shutil.which("node")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a shared CPU OpenMP oversubscription slows them ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_run(dm, variant: str, folder: Path, image_size: int = SIZE) -> Path:
    """A two-step S2I run saved as a Lightning run folder (<folder>/checkpoints/last.ckpt)."""
    import lightning as L

    from cmav.tasks import S2ITask

    L.seed_everything(0, verbose=False)
    task = S2ITask(variant=variant, encoder_mode="scratch", image_size=image_size, sample_every_n_steps=0,
                   encoder={"base_channels": 8, "max_channels": 32, "feature_dim": 32},
                   generator={"base_channels": 8, "max_channels": 32, "cond_proj_dim": 16},
                   discriminator={"base_channels": 8, "max_channels": 32, "cond_proj_dim": 16})  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    (folder / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(str(folder / "checkpoints" / "last.ckpt"))
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """Tiny Sub-URMP data (13 classes x 2 validation pairs), two S2I runs and a folder of images."""
    from cmav.data.datamodule import AudioVisualDataModule

    base = tmp_path_factory.mktemp("human_eval")
    data = make_suburmp(base / "data", chunks=2)
    dm = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=8, progress=False)
    runs = {v: _tiny_run(dm, v, base / "runs" / v) for v in ("s2i_c", "s2i_n")}
    # "or takes": already-made images named by stem, half in class folders, half loose
    flat = base / "made" / "flat"
    for k, wav in enumerate(sorted((data / "chunk" / "validation").rglob("*.wav"))):
        target = flat / wav.parent.name / f"{wav.stem}.png" if k % 2 else flat / f"{wav.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), (128, 128, 128)).save(target)
    return {"base": base, "data": data, "runs": runs, "flat": flat}


@pytest.fixture(scope="module")
def study(lab) -> Path:
    out = lab["base"] / "sheet"
    make_study([str(lab["runs"]["s2i_c"]), str(lab["runs"]["s2i_n"]), str(lab["flat"])], out,
               n_items=14, seed=0, n_checks=3)  # fmt: skip
    return out


# ---------------------------------------------------------------------- make


def test_manifest_lists_methods_pairs_items_and_image_hashes(study, lab):
    m = load_manifest(study)
    assert m.method_names == ["real", "s2i_c", "s2i_n", "flat"]
    assert [x.kind for x in m.methods] == ["reference", "checkpoint", "checkpoint", "images"]
    assert m.methods[1].info["variant"] == "s2i_c" and m.methods[2].info["variant"] == "s2i_n"
    rated = [p for p in m.pairs if not p.id.startswith("c")]
    assert len(rated) == 14 and len({p.class_name for p in rated}) == 13  # spread over every class
    assert len(m.items) == 14 * 4 + 3 and len(m.checks) == 3
    check_pairs = {c.pair for c in m.checks}
    assert not check_pairs & {p.id for p in rated}  # checks are frames nobody rates otherwise
    for c in m.checks:
        assert c.method == "real" and c.true_class and c.label != c.true_class.replace("_", " ")
    for item in m.items:
        path = study / item.image
        assert path.is_file() and sha256_file(path) == item.sha256
        assert re.fullmatch(r"images/i[0-9a-f]{8}\.png", item.image) and item.image == f"images/{item.id}.png"
        assert Image.open(path).size == (SIZE, SIZE)  # the folder's 48-px images are brought to the runs' size
    raw = json.loads((study / "manifest.json").read_text())
    assert raw["study_id"] == m.study_id and len(raw["items"]) == len(m.items)
    assert all(len(i["sha256"]) == 64 for i in raw["items"])


def test_images_are_the_real_frames_and_the_checkpoints_generations(study, lab):
    from cmav.data.datasets import open_split
    from cmav.evaluation.s2i import generate_images, make_generator_fn

    m = load_manifest(study)
    split = open_split("suburmp", lab["data"], "validation", image_size=SIZE, progress=False)
    pairs = [p for p in m.pairs if not p.id.startswith("c")]
    idx = [split.tensors.stems.index(p.stem) for p in pairs]
    fn, z_dim, _ = make_generator_fn(str(lab["runs"]["s2i_c"] / "checkpoints" / "last.ckpt"))
    fake = generate_images(fn, split.tensors.audio[idx], z_dim, seed=0)
    by = {(i.method, i.pair): i for i in m.items if not i.check}
    for k, p in enumerate(pairs):
        want_fake = ((fake[k].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(study / by[("s2i_c", p.id)].image)), want_fake)
        real = split.tensors.images[idx[k]].permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(study / by[("real", p.id)].image)), real)
    flat = np.asarray(Image.open(study / by[("flat", pairs[0].id)].image))
    assert (flat == 128).all()


def test_same_seed_makes_the_same_study_and_a_study_is_never_overwritten(study, lab, tmp_path):
    runs = [str(lab["runs"]["s2i_c"]), str(lab["runs"]["s2i_n"]), str(lab["flat"])]
    again = make_study(runs, tmp_path / "again", n_items=14, seed=0, n_checks=3)
    first = load_manifest(study)
    assert again.study_id == first.study_id
    assert [(i.id, i.sha256) for i in again.items] == [(i.id, i.sha256) for i in first.items]
    with pytest.raises(HumanEvalError, match="already holds a study"):
        make_study(runs, study, n_items=14, seed=0)
    with pytest.raises(HumanEvalError, match="also that of"):  # two methods of the same name
        make_study([runs[0], str(lab["runs"]["s2i_c"] / "checkpoints" / "last.ckpt")], tmp_path / "dup")
    with pytest.raises(HumanEvalError, match="no such run"):
        make_study([str(tmp_path / "nope")], tmp_path / "x")
    with pytest.raises(HumanEvalError, match="only 26 are available"):
        make_study(runs[:1], tmp_path / "big", n_items=27)


def test_the_real_frames_do_not_depend_on_the_order_of_the_runs(lab, tmp_path):
    # read at the first run's size and scaled up to a larger run's, they came out blurred when the
    # smaller run came first; textured frames show it (a flat colour scales to itself)
    import shutil

    from cmav.data.datamodule import AudioVisualDataModule

    data = tmp_path / "data"
    shutil.copytree(lab["data"], data, ignore=shutil.ignore_patterns(".cmav*", "*cache*"))
    rng = np.random.default_rng(0)
    for jpg in sorted((data / "img").rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(jpg, quality=95)
    dm = AudioVisualDataModule(root=str(data), image_size=2 * SIZE, batch_size=8, progress=False)
    big = _tiny_run(dm, "s2i_n", tmp_path / "big", image_size=2 * SIZE)
    small = lab["runs"]["s2i_c"]

    def real_frames(order, out):
        m = make_study([f"{name}={path}" for name, path in order], tmp_path / out, n_items=4, seed=0, n_checks=0,
                       data_root=str(data))  # fmt: skip
        return sorted(i.sha256 for i in m.items if i.method == "real")

    small_first = real_frames([("small", small), ("big", big)], "a")
    assert small_first == real_frames([("big", big), ("small", small)], "b")


def test_rater_order_is_fixed_per_rater_and_differs_between_raters():
    ids = [f"{k:08x}" for k in range(40)]
    a = rater_order("hs-1", "alice", ids)
    assert a == rater_order("hs-1", "alice", ids) == rater_order("hs-1", "  alice\n", ids)
    assert rater_order("hs-1", "alice", ids[::-1]) == a  # the listing order of the ids does not matter
    assert sorted(a) == ids and a != ids
    others = [rater_order("hs-1", r, ids) for r in ("bob", "carol", "dave")]
    assert all(o != a for o in others) and len({tuple(o) for o in others}) == 3
    assert rater_order("hs-2", "alice", ids) != a  # another study, another order


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_javascript_draws_the_same_order_as_python():
    ids = [f"{k:08x}" for k in range(25)]
    raters = ["alice", "bob", " x ", "Zoë ✓", EVIL, "日本"]
    js = ORDER_JS + f"console.log(JSON.stringify({json.dumps(raters)}.map(r => raterOrder('hs-abc', r, {json.dumps(ids)}))));"
    out = subprocess.run([NODE, "-e", js], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [rater_order("hs-abc", r, ids) for r in raters]


# ---------------------------------------------------------------------- the page


def _page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_page_hides_which_method_made_which_image(study, lab):
    m = load_manifest(study)
    page = (study / "index.html").read_text()
    for secret in ["s2i_c", "s2i_n", "flat", str(lab["base"]), "checkpoint", "attention", "true_class", "sha256"]:
        assert secret not in page, secret
    for p in m.pairs:
        assert p.stem not in page and f'"{p.id}"' not in page
    data = _page_data(page)
    assert [i["id"] for i in data["items"]] == sorted(m.item_ids)  # listed by random id, not by method
    assert all(set(i) == {"id", "image", "label"} for i in data["items"])
    with zipfile.ZipFile(study / "for_raters.zip") as z:
        names = z.namelist()
    assert "index.html" in names and "manifest.json" not in names
    assert len([n for n in names if n.startswith("images/")]) == len(m.items)
    for f in [study / "print.html", study / "ratings_template.csv"]:
        assert "s2i_c" not in f.read_text() and "flat" not in f.read_text()


def test_page_loads_nothing_from_outside_its_folder(study):
    for name in ("index.html", "print.html"):
        page = (study / name).read_text()
        assert "http:" not in page and "https:" not in page and "<link" not in page and "url(" not in page
        assert "@import" not in page and "<iframe" not in page
        assert "default-src 'none'" in page  # CSP: no network, even if something slipped in
        markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)
        for ref in re.findall(r'\s(?:src|href|action|poster|data)\s*=\s*["\']?([^"\'\s>]+)', markup):
            assert not re.match(r"^([a-z]+:|//|/)", ref), ref
            assert (study / ref).is_file(), ref
        # the script points images and links at the items' own paths and at download blobs, nothing else
        code = "".join(re.findall(r"<script>(.*?)</script>", page, re.S))
        assigned = set(re.findall(r"\.(?:src|href)\s*=\s*([^;]+);", code))
        assert assigned <= {"item.image", "ITEMS.get(next).image", "URL.createObjectURL(blob)"}, assigned
        assert "fetch(" not in code and "XMLHttpRequest" not in code and "import(" not in code
    data = _page_data((study / "index.html").read_text())
    assert all((study / i["image"]).is_file() and not i["image"].startswith(("/", "..")) for i in data["items"])


def test_print_sheet_and_csv_template_follow_the_paper_order(study):
    m = load_manifest(study)
    order = rater_order(m.study_id, "paper", m.item_ids)
    rows = list(csv.DictReader((study / "ratings_template.csv").open()))
    assert [r["item"] for r in rows] == order
    assert list(rows[0]) == ["study_id", "fingerprint", "rater_id", "position", "item", "match", "realism"]
    assert all(r["study_id"] == m.study_id and r["fingerprint"] == m.fingerprint and r["match"] == "" for r in rows)
    sheet = (study / "print.html").read_text()
    assert [s for s in re.findall(r'src="images/(i[0-9a-f]+)\.png"', sheet)] == order
    assert "@media print" in sheet and "break-inside: avoid" in sheet
    # the template, filled in by hand for two paper raters in one file, passes validation as it is
    filled = study.parent / "paper_filled.csv"
    with filled.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(rows[0]))
        for rid in ("paper-1", "paper-2"):
            w.writerows([r["study_id"], r["fingerprint"], rid, r["position"], r["item"], "2", " 3 "] for r in rows)
    loaded = load_ratings([filled], m)
    assert loaded.problems == [] and [s.rater_id for s in loaded.sheets] == ["paper-1", "paper-2"]
    assert all(v == {"match": 2, "realism": 3} for v in loaded.sheets[1].answers.values())


# A real browser: Debian's chromium driven by Selenium through Debian's chromedriver (both installed
# by `make test`, i.e. scripts/install.sh --test). Never Selenium Manager: it would download a driver.
CHROMIUM_BIN = "/usr/bin/chromium"
CHROMEDRIVER_BIN = "/usr/bin/chromedriver"


@pytest.fixture()
def browser(tmp_path):
    """A headless chromium whose downloads land in ``tmp_path / "downloads"`` (``driver.download_dir``)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM_BIN, CHROMEDRIVER_BIN):
        if not Path(path).is_file():
            pytest.skip(f"{path} is missing: `make test` (scripts/install.sh --test) installs Debian's "
                        "chromium and chromium-driver")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM_BIN
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1200"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER_BIN), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.download_dir = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, what: str, timeout: float = 20.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _shown(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


def _current_item(driver) -> str:
    src = driver.find_element("id", "image").get_attribute("src")
    return re.search(r"images/(i[0-9a-f]{8})\.png$", src).group(1)


def _answer_here(driver, values: list[int]) -> None:
    """Click, as a rater does, the point ``values[k]`` of the k-th question of the shown image."""
    fieldsets = driver.find_elements("css selector", "#questions fieldset")
    assert len(fieldsets) == len(values)
    for fs, v in zip(fieldsets, values, strict=True):
        fs.find_element("xpath", f".//input[@type='radio' and @value='{v}']/..").click()  # the label, as a mouse would
        assert fs.find_element("css selector", f"input[value='{v}']").is_selected()


def test_a_rater_rates_in_a_real_browser_reloads_exports_and_the_export_is_analysed(study, browser, tmp_path, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)
    driver, n = browser, len(m.items)
    by_id = {i.id: i for i in m.items}
    # what this rater answers: match by method (checks: 1, so the rater is kept), realism 4 for real, 2 otherwise
    want_match = {"real": 5, "s2i_c": 3, "s2i_n": 2, "flat": 4}

    def values(item_id: str) -> list[int]:
        it = by_id[item_id]
        return [1, 3] if it.check else [want_match[it.method], 4 if it.method == "real" else 2]

    driver.get((study / "index.html").as_uri())
    assert _shown(driver, "start") and not _shown(driver, "rate")
    assert driver.find_element("id", "count").text == str(n)
    assert driver.execute_script("return raterOrder(arguments[0], ' alice ', arguments[1]);", m.study_id,
                                 m.item_ids) == rater_order(m.study_id, "alice", m.item_ids)  # fmt: skip
    driver.find_element("css selector", "#start-form button[type=submit]").click()  # no id yet: refused
    assert "rater id" in driver.find_element("id", "start-error").text and not _shown(driver, "rate")
    driver.find_element("id", "rater-id").send_keys("  alice ")
    driver.find_element("css selector", "#start-form button[type=submit]").click()
    _wait(lambda: _shown(driver, "rate"), "the rating view")
    assert driver.find_element("id", "rater-name").text == "alice"

    # answer about half the images, moving on with "Next" as a rater does
    half = n // 2
    seen = []
    for _ in range(half):
        item = _current_item(driver)
        seen.append(item)
        legend = driver.find_element("css selector", "#questions legend").text
        assert by_id[item].label in legend  # the question names the item's label
        _answer_here(driver, values(item))
        driver.find_element("id", "next").click()
    assert seen == rater_order(m.study_id, "alice", m.item_ids)[:half]  # the page's order is Python's
    assert f"{half} answered, {n - half} to go" in driver.find_element("id", "position").text
    finish = driver.find_element("id", "finish")
    assert not finish.is_enabled()  # submit is blocked while images are unanswered
    driver.execute_script("arguments[0].disabled = false; arguments[0].click();", finish)  # forced: still refused
    assert not _shown(driver, "done") and "answer every question" in driver.find_element("id", "finish-hint").text

    # reload: the id is offered again, Start restores every answer
    driver.refresh()
    _wait(lambda: _shown(driver, "start"), "the start view after a reload")
    assert driver.find_element("id", "rater-id").get_attribute("value") == "alice"
    assert "alice" in driver.find_element("id", "resume-note").text
    driver.find_element("css selector", "#start-form button[type=submit]").click()
    _wait(lambda: _shown(driver, "rate"), "the rating view after a reload")
    assert f"{half} answer(s) were restored" in driver.find_element("id", "restored").text
    assert f"{half} answered" in driver.find_element("id", "position").text
    assert _current_item(driver) == rater_order(m.study_id, "alice", m.item_ids)[half]  # back where the rater was
    for k in range(half - 1, -1, -1):  # walk back: each image shows the points clicked before the reload
        driver.find_element("id", "prev").click()
        assert _current_item(driver) == seen[k]
        for fs, v in zip(driver.find_elements("css selector", "#questions fieldset"), values(seen[k]), strict=True):
            checked = [i.get_attribute("value") for i in fs.find_elements("css selector", "input") if i.is_selected()]
            assert checked == [str(v)]

    # the rest: "First unanswered" jumps there; submit unlocks only after the last answer
    while True:
        jump = driver.find_element("id", "jump")
        if not jump.is_displayed():
            break
        assert not driver.find_element("id", "finish").is_enabled()
        jump.click()
        _answer_here(driver, values(_current_item(driver)))
    assert f"{n} answered, 0 to go" in driver.find_element("id", "position").text
    driver.find_element("id", "finish").click()
    _wait(lambda: _shown(driver, "done"), "the thank-you view")
    driver.find_element("id", "dl-json").click()
    name = f"ratings_{m.study_id}_alice.json"
    exported = _wait(lambda: (driver.download_dir / name).is_file() and (driver.download_dir / name), name)
    text = _wait(lambda: exported.read_text() if exported.stat().st_size else "", "the download to finish")
    assert json.loads(text) == json.loads(driver.find_element("id", "export-json").get_attribute("value"))
    driver.find_element("id", "dl-csv").click()
    csv_file = _wait(lambda: next(driver.download_dir.glob("*.csv"), None), "the CSV download")

    # the downloaded file goes to `cmav human-eval analyze` as it is
    obj = json.loads(text)
    assert obj["rater_id"] == "alice" and obj["fingerprint"] == m.fingerprint  # which version of the study
    exported_csv = list(csv.DictReader(csv_file.open()))
    assert {r["fingerprint"] for r in exported_csv} == {m.fingerprint} and len(exported_csv) == n
    assert [r["item"] for r in obj["ratings"]] == rater_order(m.study_id, "alice", m.item_ids)
    assert all(r["answers"] == dict(zip(["match", "realism"], values(r["item"]), strict=True)) for r in obj["ratings"])
    second = tmp_path / "bob.csv"  # a second rater (the CSV export, renamed) so agreement has two raters
    second.write_text(_wait(lambda: csv_file.read_text(), "the CSV text").replace('"alice"', '"bob"'))
    out = tmp_path / "report"
    assert main(["human-eval", "analyze", str(study), str(exported), str(second), "-o", str(out)]) == 0
    capsys.readouterr()
    result = json.loads((out / "report.json").read_text())
    assert result["n_raters_valid"] == 2 and result["n_raters_kept"] == 2 and result["problems"] == []
    rows = {(r["method"], r["question"]): r for r in result["summary"]}
    for method, v in want_match.items():
        assert rows[(method, "match")]["mean"] == v and rows[(method, "match")]["sd"] == 0
        assert rows[(method, "realism")]["mean"] == (4 if method == "real" else 2)
    assert "alice" in (out / "report.md").read_text()


# ---------------------------------------------------------------------- escaping


@pytest.fixture(scope="module")
def evil_study(tmp_path_factory) -> Path:
    """A paired data set whose second class folder is named like markup, rated from an image folder
    also named like markup, with a markup title; no checkpoint, so --data gives the data."""
    base = tmp_path_factory.mktemp("evil")
    data = make_paired(base / "data", classes=("dog", EVIL), per_class=3)
    made = base / EVIL
    for split_dir in (data / "image" / "validation").iterdir():
        for img in split_dir.iterdir():
            made.mkdir(exist_ok=True)
            Image.new("RGB", (24, 24), (10, 200, 10)).save(made / f"{img.stem}.png")
    out = base / "sheet"
    make_study([str(made)], out, n_items=4, seed=0, n_checks=1, data_root=str(data), layout="paired",
               image_size=24, title=f"</script><script>alert(1)</script>{EVIL}", paper_raters=[EVIL])  # fmt: skip
    return out


def test_labels_titles_and_rater_ids_are_text_never_markup(evil_study):
    m = load_manifest(evil_study)
    assert EVIL in m.method_names and any(i.label == EVIL for i in m.items)
    page = (evil_study / "index.html").read_text()
    assert EVIL not in page and "<script>alert" not in page and "</script><script>" not in page
    assert page.count("</script>") == 2  # the data block and the code block, nothing injected
    data = _page_data(page)
    assert EVIL in {i["label"] for i in data["items"]} and data["title"].startswith("</script>")  # round-trips as text
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    assert script_json({"x": "</script>&<"}) == '{"x": "\\u003c/script\\u003e\\u0026\\u003c"}'
    for sheet in [evil_study / "print.html", *(evil_study / "paper").glob("*.html")]:
        text = sheet.read_text()
        assert EVIL not in text and html.escape(EVIL) in text, sheet
    assert len(list((evil_study / "paper").glob("*.html"))) == 1  # rater id -> a safe file name
    assert not any(c in p.name for p in (evil_study / "paper").iterdir() for c in "<>= ")


def test_a_browser_shows_markup_labels_and_rater_ids_as_text(evil_study, browser):
    from selenium.common.exceptions import NoAlertPresentException

    m = load_manifest(evil_study)
    driver = browser
    url = (evil_study / "index.html").as_uri() + "?rater=" + "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"
    driver.get(url)  # ?rater= starts at once, with the markup as the rater id
    _wait(lambda: _shown(driver, "rate"), "the rating view")
    assert driver.find_element("id", "rater-name").text == EVIL  # shown as text
    assert driver.title.startswith("</script><script>alert(1)</script>")
    assert driver.find_element("id", "title").text == m.title
    labels = set()
    for _ in range(len(m.items)):
        labels.add(driver.find_element("css selector", "#questions legend strong.label").text)
        driver.find_element("id", "next").click()
    assert EVIL in labels  # the markup label, as text
    # nothing was parsed as markup: no injected element, and no alert ever fired
    assert driver.find_elements("css selector", "[onerror]") == []
    assert [e.get_attribute("id") for e in driver.find_elements("tag name", "img")] == ["image"]  # only the page's own
    assert len(driver.find_elements("tag name", "script")) == 2  # the data block and the code block
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


def test_report_escapes_rater_ids_labels_and_method_names(evil_study, tmp_path):
    m = load_manifest(evil_study)
    ratings = {"format": "cmav-human-eval-ratings", "study_id": m.study_id, "rater_id": EVIL,
               "ratings": [{"item": i.id, "answers": {"match": 1 if i.check else 4, "realism": 3}} for i in m.items]}  # fmt: skip
    (tmp_path / f"{EVIL}.json").write_text(json.dumps(ratings))
    second = {**ratings, "rater_id": "r2"}
    (tmp_path / "r2.json").write_text(json.dumps(second))
    result, paths = run_analysis(evil_study, [tmp_path], out=tmp_path / "report", n_boot=50)
    text = paths["report_md"].read_text()
    assert EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert md(EVIL) in text and md("a|b") == "a\\|b"
    assert result["n_raters_kept"] == 2


# ---------------------------------------------------------------------- analysis

BASE = {"real": 4, "s2i_c": 3, "s2i_n": 2, "flat": 3}
RANK = {"real": 0, "s2i_c": 1, "s2i_n": 2, "flat": 3}


def _synthetic(m, rater: str, offset: int, extra: dict | None = None) -> dict:
    """match: BASE[method] + offset, so with offsets -1, 0, +1 over three raters each method's mean is
    exactly BASE; realism: 5 for real, a rater- and pair-dependent 1-4 otherwise; checks passed (1)."""
    ratings = []
    for i in m.items:
        if i.check:
            ans = {"match": 1, "realism": 4}
        else:
            k = int(i.pair[1:])
            realism = 5 if i.method == "real" else 1 + (k * (2 + offset) + RANK[i.method]) % 4
            ans = {"match": BASE[i.method] + offset, "realism": realism}
        ratings.append({"item": i.id, "position": 0, "answers": ans})
    obj = {"format": "cmav-human-eval-ratings", "version": 1, "study_id": m.study_id, "rater_id": rater,
           "ratings": ratings}  # fmt: skip
    obj.update(extra or {})
    return obj


def _write_csv(path: Path, obj: dict) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "rater_id", "position", "item", "match", "realism"])
        for r in obj["ratings"]:
            w.writerow([obj["study_id"], obj["rater_id"], r["position"], r["item"], r["answers"]["match"],
                        r["answers"]["realism"]])  # fmt: skip


@pytest.fixture()
def ratings_dir(study, tmp_path) -> Path:
    m = load_manifest(study)
    d = tmp_path / "ratings"
    d.mkdir()
    (d / "r1.json").write_text(json.dumps(_synthetic(m, "r1", -1)))
    (d / "r2.json").write_text(json.dumps(_synthetic(m, "r2", 0)))
    _write_csv(d / "r3.csv", _synthetic(m, "r3", +1))
    # an inattentive rater: 5 everywhere (a wrong label "matches perfectly"): must be dropped
    careless = _synthetic(m, "careless", 0)
    for r in careless["ratings"]:
        r["answers"] = {"match": 5, "realism": 5}
    (d / "careless.json").write_text(json.dumps(careless))
    return d


def test_analysis_recovers_known_means_and_drops_inattentive_raters(study, ratings_dir, tmp_path, capsys):
    from cmav.cli.main import main

    out = tmp_path / "report"
    assert main(["human-eval", "analyze", str(study), str(ratings_dir / "r1.json"), str(ratings_dir / "r2.json"),
                 str(ratings_dir / "r3.csv"), str(ratings_dir / "careless.json"), "-o", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "dropped: rater 'careless'" in err and "3 attention check(s)" in err
    result = json.loads((out / "report.json").read_text())
    assert result["n_raters_valid"] == 4 and result["n_raters_kept"] == 3
    rows = {(r["method"], r["question"]): r for r in result["summary"]}
    for method, base in BASE.items():
        r = rows[(method, "match")]
        assert r["n_ratings"] == 3 * 14 and r["mean"] == pytest.approx(base)
        assert r["sd"] == pytest.approx(math.sqrt(28 / 41))  # 14 x (-1, 0, +1) around the base
        assert base - 1 <= r["ci_low"] <= base <= r["ci_high"] <= base + 1 and r["ci_low"] < r["ci_high"]
    assert rows[("real", "realism")]["mean"] == 5 and rows[("real", "realism")]["sd"] == 0
    per_class = [r for r in result["per_class"] if r["method"] == "s2i_n" and r["question"] == "match"]
    assert len(per_class) == 13 and all(r["mean"] == pytest.approx(2) for r in per_class)
    assert sorted(r["n_ratings"] for r in per_class) == [3] * 12 + [6]  # 14 pairs: one class has two
    csv_rows = list(csv.DictReader((out / "summary.csv").open()))
    assert float(next(r for r in csv_rows if r["method"] == "real" and r["question"] == "match")["mean"]) == 4
    raters = list(csv.DictReader((out / "raters.csv").open()))
    careless = next(r for r in raters if r["rater_id"] == "careless")
    assert careless["status"] == "dropped (attention checks)" and careless["checks_failed"] == "3"
    md_text = (out / "report.md").read_text()
    assert "dropped (attention checks)" in md_text and "Krippendorff" in md_text and "Holm" in md_text
    assert (out / "scores.png").is_file() and Image.open(out / "scores.png").size[0] > 300
    # agreement: the kept raters x rated images, built here from the files, through krippendorff's ordinal alpha
    import krippendorff

    m = load_manifest(study)
    files = [json.loads((ratings_dir / f"r{k}.json").read_text()) for k in (1, 2)]
    files.append({"ratings": [{"item": r["item"], "answers": {"match": int(r["match"])}}
                              for r in csv.DictReader((ratings_dir / "r3.csv").open())]})  # fmt: skip
    rated = [i.id for i in m.items if not i.check]
    table = np.array([[{r["item"]: r["answers"]["match"] for r in f["ratings"]}[i] for i in rated] for f in files], float)
    alpha = {a["question"]: a["alpha"] for a in result["agreement"]}
    assert alpha["match"] == pytest.approx(krippendorff.alpha(reliability_data=table, level_of_measurement="ordinal"))
    assert 0 < alpha["match"] < 1
    pw = {(r["method_a"], r["method_b"], r["question"]): r for r in result["pairwise"]}
    real_n = pw[("real", "s2i_n", "match")]
    assert real_n["n"] == 14 and real_n["mean_diff"] == pytest.approx(2) and real_n["rank_biserial"] == 1
    assert pw[("s2i_c", "flat", "match")]["p"] == 1.0  # identical scores: no difference
    assert len([r for r in result["pairwise"] if r["question"] == "match"]) == 6


def test_wilcoxon_and_holm_match_scipy_and_a_hand_computation(study, ratings_dir, tmp_path):
    from scipy.stats import wilcoxon

    m = load_manifest(study)
    result, _ = run_analysis(study, [ratings_dir / "r1.json", ratings_dir / "r2.json", ratings_dir / "r3.csv"],
                             out=tmp_path / "rep", n_boot=100)  # fmt: skip
    # recompute the realism per-pair means from the raw files, independently of the analysis code
    raw = [json.loads((ratings_dir / f"r{k}.json").read_text()) for k in (1, 2)]
    raw.append({"ratings": [{"item": r["item"], "answers": {"realism": int(r["realism"])}}
                            for r in csv.DictReader((ratings_dir / "r3.csv").open())]})  # fmt: skip
    by_item = {i.id: i for i in m.items}
    means: dict[tuple[str, str], list[int]] = {}
    for obj in raw:
        for r in obj["ratings"]:
            it = by_item[r["item"]]
            if not it.check:
                means.setdefault((it.method, it.pair), []).append(r["answers"]["realism"])
    pairs = sorted({it.pair for it in m.items if not it.check})
    x = [np.mean(means[("s2i_c", p)]) for p in pairs]
    y = [np.mean(means[("real", p)]) for p in pairs]
    realism = [r for r in result["pairwise"] if r["question"] == "realism"]
    row = next(r for r in realism if {r["method_a"], r["method_b"]} == {"real", "s2i_c"})
    sign = 1 if row["method_a"] == "s2i_c" else -1
    assert row["p"] == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-12)
    assert row["mean_diff"] == pytest.approx(sign * (np.mean(x) - np.mean(y)))
    ps = [r["p"] for r in result["pairwise"] if r["question"] == "realism"]
    assert [r["p_holm"] for r in result["pairwise"] if r["question"] == "realism"] == pytest.approx(holm(ps))
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1, made monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, float("nan")])[0] == pytest.approx(0.2) and math.isnan(holm([0.2, float("nan")])[1])
    direct = wilcoxon_paired(np.array([1, 2, 3, 4, 5, 6, 7.0]), np.array([2, 2, 1, 1, 1, 1, 1.0]))
    assert direct["p"] == pytest.approx(wilcoxon([1, 2, 3, 4, 5, 6, 7.0], [2, 2, 1, 1, 1, 1, 1.0]).pvalue)


def test_krippendorff_ordinal_alpha_on_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units;
    # published: nominal .743, ordinal .815, interval .849
    nan = np.nan
    data = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ])  # fmt: skip
    alpha, note = krippendorff_ordinal(data, DEFAULT_QUESTIONS[0])
    assert round(alpha, 3) == 0.815 and note == ""
    assert krippendorff_ordinal(data[:1], DEFAULT_QUESTIONS[0])[0] is None
    same = krippendorff_ordinal(np.full((3, 4), 2.0), DEFAULT_QUESTIONS[0])
    assert same == (None, "every rating is the same value: alpha is undefined")
    perfect = np.array([[1, 2, 3, 4, 5.0]] * 3)
    assert krippendorff_ordinal(perfect, DEFAULT_QUESTIONS[0])[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------- validation


def _bad(m, tmp_path: Path, name: str, mutate) -> Path:
    obj = _synthetic(m, name, 0)
    obj = mutate(obj) or obj
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_study", "study id 'hs-other' is not this study's"),
        ("unknown_item", "1 unknown item id(s), not in this study's manifest: 'deadbeef'"),
        ("out_of_range", "question 'match': value 7 is outside 1-5"),
        ("not_whole", "question 'realism': '4.5' is not a whole number"),
        ("missing_item", "1 of 59 items missing (unanswered)"),
        ("missing_answer", "1 answer(s) missing"),
        ("twice", "is rated twice"),
        ("unknown_question", "unknown question(s) 'beauty'"),
        ("empty_rater", "empty rater id"),
    ],
)
def test_each_bad_ratings_file_gets_a_clear_message(study, tmp_path, case, message, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)

    def mutate(o):
        r = o["ratings"]
        if case == "wrong_study":
            o["study_id"] = "hs-other"
        elif case == "unknown_item":
            r.append({"item": "deadbeef", "answers": {"match": 3, "realism": 3}})
        elif case == "out_of_range":
            r[0]["answers"]["match"] = 7
        elif case == "not_whole":
            r[1]["answers"]["realism"] = "4.5"
        elif case == "missing_item":
            r.pop(3)
        elif case == "missing_answer":
            del r[2]["answers"]["realism"]
        elif case == "twice":
            r.append(dict(r[0]))
        elif case == "unknown_question":
            r[0]["answers"]["beauty"] = 3
        elif case == "empty_rater":
            o["rater_id"] = "  "

    bad = _bad(m, tmp_path, "bad", mutate)
    good = _bad(m, tmp_path, "good", lambda o: None)
    with pytest.raises(HumanEvalError) as exc:
        run_analysis(study, [good, bad], out=tmp_path / "rep")
    assert str(bad) in str(exc.value) and message in str(exc.value)
    # the command line: one error line, exit status 2
    assert main(["human-eval", "analyze", str(study), str(good), str(bad), "-o", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    # --skip-invalid: the bad rater is left out, and listed, never silently
    result, paths = run_analysis(study, [good, bad], out=tmp_path / "rep2", skip_invalid=True, n_boot=20)
    assert result["n_raters_kept"] == 1 and any(message in p for p in result["problems"])
    listed = list(csv.DictReader(paths["raters_csv"].open()))
    assert any(r["status"] == "invalid (left out)" and message in r["detail"] for r in listed)


def test_duplicate_raters_unreadable_files_and_csv_columns_are_reported(study, tmp_path):
    m = load_manifest(study)
    a = _bad(m, tmp_path, "same", lambda o: None)
    b = tmp_path / "same_again.csv"
    _write_csv(b, _synthetic(m, "same", 1))
    with pytest.raises(HumanEvalError, match=r"rater 'same' appears again \(first in .*same.json\)"):
        run_analysis(study, [a, b], out=tmp_path / "r")
    broken = tmp_path / "broken.json"
    broken.write_text('{"study_id": ')
    with pytest.raises(HumanEvalError, match=r"broken.json: not valid JSON \(line 1"):
        run_analysis(study, [a, broken], out=tmp_path / "r")
    cols = tmp_path / "cols.csv"
    cols.write_text("study_id,rater_id,item,match,realsm\n")
    with pytest.raises(HumanEvalError, match="missing column\\(s\\) realism"):
        run_analysis(study, [a, cols], out=tmp_path / "r")
    blank = tmp_path / "blank.csv"
    blank.write_text(f"study_id,rater_id,item,match,realism\n{m.study_id},,{m.item_ids[0]},3,3\n")
    with pytest.raises(HumanEvalError, match="row 2: empty rater_id"):
        run_analysis(study, [a, blank], out=tmp_path / "r")
    with pytest.raises(HumanEvalError, match="no such ratings file"):
        run_analysis(study, [a, tmp_path / "missing.json"], out=tmp_path / "r")
    with pytest.raises(HumanEvalError, match="no study manifest"):
        run_analysis(tmp_path, [a], out=tmp_path / "r")


def test_a_rater_who_gives_one_answer_everywhere_is_dropped_though_every_check_passes(study, tmp_path, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)
    good = _bad(m, tmp_path, "good", lambda o: None)
    lazy = _synthetic(m, "lazy", 0)
    for r in lazy["ratings"]:
        r["answers"] = {"match": 1, "realism": 3}  # the lowest match answer passes every check
    (tmp_path / "lazy.json").write_text(json.dumps(lazy))
    result, paths = run_analysis(study, [good, tmp_path / "lazy.json"], out=tmp_path / "rep", n_boot=20)
    att = {a["rater_id"]: a for a in result["attention"]}
    assert att["lazy"]["failed"] == [] and att["lazy"]["uniform"] == 1 and att["lazy"]["dropped"]
    assert att["good"]["uniform"] is None and not att["good"]["dropped"] and result["n_raters_kept"] == 1
    row = next(r for r in csv.DictReader(paths["raters_csv"].open()) if r["rater_id"] == "lazy")
    assert row["status"] == "dropped (attention checks)" and "answered 1 on every item" in row["detail"]
    assert main(["human-eval", "analyze", str(study), str(good), str(tmp_path / "lazy.json"), "-o",
                 str(tmp_path / "rep2"), "--bootstrap", "20"]) == 0  # fmt: skip
    assert "dropped: rater 'lazy' (" in capsys.readouterr().err


def test_empty_sheets_options_and_counts_are_reported_not_passed_over(study, tmp_path, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)
    good = _bad(m, tmp_path, "good", lambda o: None)
    header_only = tmp_path / "late_rater.csv"
    header_only.write_text("study_id,rater_id,position,item,match,realism\n")
    (tmp_path / "bulk.json").write_text("[]")
    for empty, says in ((header_only, "a header only"), (tmp_path / "bulk.json", "an empty list")):
        with pytest.raises(HumanEvalError, match=rf"{empty.name}: no ratings in this file \({says}\)"):
            run_analysis(study, [good, empty], out=tmp_path / "r")
    # a blank line before a bad row: the message names the row's line in the file, as a spreadsheet shows it
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(f"study_id,rater_id,item,match,realism\n\n{m.study_id},,{m.item_ids[0]},3,3\n")
    with pytest.raises(HumanEvalError, match="row 3: empty rater_id"):
        run_analysis(study, [good, spaced], out=tmp_path / "r")
    # every file invalid: the error says why, not only that nothing is left
    with pytest.raises(HumanEvalError, match=r"every rater was left out:\n.*late_rater.csv: no ratings"):
        run_analysis(study, [header_only], out=tmp_path / "r", skip_invalid=True)
    # one CSV with two raters, each with a problem: two raters left out, not four entries
    two = tmp_path / "two.csv"
    _write_csv(two, _synthetic(m, "x", 0))
    rows = list(csv.reader(two.open()))
    rows += [[m.study_id, "y", 0, m.item_ids[0], 9, 3]]  # rater y: out of range (and missing items)
    rows[1][4] = "9"  # rater x: out of range
    with two.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    _, paths = run_analysis(study, [good, two], out=tmp_path / "rep", skip_invalid=True, n_boot=20)
    assert "left out as invalid: 2;" in paths["report_md"].read_text()
    for option in (["--allowed-failures", "-1"], ["--bootstrap", "0"]):
        assert main(["human-eval", "analyze", str(study), str(good), "-o", str(tmp_path / "o"), *option]) == 2
        assert "error: " in capsys.readouterr().err


def test_a_sheet_left_out_as_invalid_leaves_out_its_raters_and_ids_survive_the_csv(study, tmp_path):
    m = load_manifest(study)
    good = _bad(m, tmp_path, "g", lambda o: None)
    extra = tmp_path / "extra.csv"
    _write_csv(extra, _synthetic(m, "with-notes", 1))
    rows = list(csv.reader(extra.open()))
    with extra.open("w", newline="") as f:  # a column the study does not ask: the sheet is not this study's form
        csv.writer(f).writerows([rows[0] + ["notes"]] + [r + [""] for r in rows[1:]])
    loaded = load_ratings([good, extra], m)
    assert [s.rater_id for s in loaded.sheets] == ["g"]
    assert any(rid == "with-notes" and "left out with its file" in why for _, rid, why in loaded.excluded)
    # a line separator in a rater id is read as written (csv splits the rows, not str.splitlines, which
    # made it 'ab', another rater) and refused, as the page refuses it
    _write_csv(tmp_path / "odd.csv", _synthetic(m, "a\u2028b", 0))
    odd = load_ratings([tmp_path / "odd.csv"], m)
    assert not odd.sheets and any("control characters" in p.message for p in odd.problems)
    assert rater_id_problem("a\u2028b") == rater_id_problem("a\x85b") == "rater id holds control characters"


def test_changed_images_are_reported(study, tmp_path):
    m = load_manifest(study)
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    (copy / m.items[0].image).write_bytes(b"not the image")
    good = _bad(m, tmp_path, "g", lambda o: None)
    result, paths = run_analysis(copy, [good], out=tmp_path / "r", n_boot=20)
    assert any("changed since the study was made" in w for w in result["warnings"])
    assert "changed since the study was made" in paths["report_md"].read_text()


# ---------------------------------------------------------------------- questions and CLI


def test_questions_file_and_its_errors(tmp_path):
    good = tmp_path / "q.json"
    good.write_text(json.dumps([{"id": "fit", "text": "Is this a {label}?", "min": 1, "max": 7, "attention_max": 3},
                                {"id": "beauty", "text": "How nice?", "min": 0, "max": 10}]))  # fmt: skip
    qs = load_questions(good)
    assert qs[0] == Question("fit", "Is this a {label}?", 1, 7, attention_max=3) and qs[0].text_for("tuba") == "Is this a tuba?"
    for bad, msg in [([{"id": "Bad id", "text": "x"}], "question id"),
                     ([{"id": "a", "text": "x", "min": 3, "max": 3}], "min < max"),
                     ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "used twice"),
                     ([{"id": "a", "text": "x", "colour": 1}], "unknown field"),
                     ([{"id": "a", "text": "x", "attention_max": 5}], "attention_max")]:  # fmt: skip
        good.write_text(json.dumps(bad))
        with pytest.raises(HumanEvalError, match=msg):
            load_questions(good)
    yaml_file = tmp_path / "q.yaml"
    yaml_file.write_text("- {id: fit, text: 'A {label}?', low: no, high: yes}\n")
    with pytest.raises(HumanEvalError, match="low must be text, got False"):  # YAML's bare no
        load_questions(yaml_file)
    with pytest.raises(HumanEvalError, match="attention checks need a question with attention_max"):
        make_study(["x"], tmp_path / "s", questions=[Question("q", "How?")], n_checks=2)


def test_sampling_spreads_over_classes_and_depends_on_the_seed():
    labels = [c for c in range(5) for _ in range(4)]
    picks = sample_pairs(labels, 7, np.random.default_rng(0))
    counts = np.bincount([labels[i] for i in picks], minlength=5)
    assert len(set(picks)) == 7 and counts.min() >= 1 and counts.max() == 2
    assert picks == sample_pairs(labels, 7, np.random.default_rng(0))
    assert picks != sample_pairs(labels, 7, np.random.default_rng(1))
    assert not set(sample_pairs(labels, 5, np.random.default_rng(0), exclude=set(picks))) & set(picks)


def test_cli_make_and_errors(lab, tmp_path, capsys):
    from cmav.cli.main import main

    out = tmp_path / "cli_sheet"
    assert main(["human-eval", "make", "--runs", f"mine={lab['flat']}", "--data", str(lab["data"]), "--items", "3",
                 "--checks", "1", "--seed", "3", "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "3 pairs x 2 methods (real, mine) + 1 attention checks = 7 images" in printed
    assert (out / "index.html").is_file() and load_manifest(out).seed == 3
    assert main(["human-eval", "make", "--runs", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["human-eval", "make", "--runs", str(lab["flat"]), "-o", str(tmp_path / "o2")]) == 2
    assert "give --data ROOT" in capsys.readouterr().err
    assert main(["human-eval", "make", "--runs", str(lab["flat"]), "--data", str(tmp_path / "nodata"), "-o",
                 str(tmp_path / "o3")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()  # a failed make leaves no half-made study behind


def test_print_sheet_for_a_named_rater_uses_their_order(study):
    m = load_manifest(study)
    sheet = print_sheet(m, "alice", "../")
    assert re.findall(r'src="\.\./images/(i[0-9a-f]+)\.png"', sheet) == rater_order(m.study_id, "alice", m.item_ids)
    assert "Rater id: <strong>alice</strong>" in sheet


# ---------------------------------------------------------------------- study versions, ratings folders, options


@pytest.fixture(scope="module")
def colours(lab) -> dict[str, Path]:
    """Three image folders (methods without a checkpoint), one solid colour each, one image per validation pair."""
    out = {}
    for name, rgb in (("A", (10, 200, 10)), ("B", (200, 10, 10)), ("C", (10, 10, 200))):
        folder = lab["base"] / "colours" / name
        folder.mkdir(parents=True)
        for wav in sorted((lab["data"] / "chunk" / "validation").rglob("*.wav")):
            Image.new("RGB", (SIZE, SIZE), rgb).save(folder / f"{wav.stem}.png")
        out[name] = folder
    return out


def _plain_sheet(m, rater: str, **extra) -> dict:
    """A rater of any study who passes its checks: 1 on checks, 3 or 4 on the rest (never one answer throughout)."""
    ratings = [{"item": i.id, "answers": {"match": 1 if i.check else 3 + k % 2, "realism": 2 + k % 3}}
               for k, i in enumerate(m.items)]  # fmt: skip
    return {"format": "cmav-human-eval-ratings", "study_id": m.study_id, "rater_id": rater, "ratings": ratings, **extra}


def test_item_ids_depend_on_the_content_and_a_sheet_of_another_study_version_is_refused(lab, colours, tmp_path):
    def make(out: str, runs: list[str]):
        return make_study(runs, tmp_path / out, n_items=4, seed=0, data_root=str(lab["data"]), study_id="pilot",
                          n_checks=1)  # fmt: skip

    m1 = make("s1", [f"A={colours['A']}", f"B={colours['B']}"])
    m2 = make("s2", [f"A={colours['B']}", f"B={colours['A']}"])  # the same names and seed, the images swapped
    m3 = make("s3", [f"A={colours['A']}", f"C={colours['C']}"])  # another method
    assert m1.study_id == m2.study_id == m3.study_id == "pilot"
    # the ids were drawn from the seed and the study's size alone: the same ids named other methods' images
    assert not set(m1.item_ids) & set(m2.item_ids) and not set(m1.item_ids) & set(m3.item_ids)
    # the same content (the runs given in another order): the same ids for the same images
    again = make("s1_again", [f"B={colours['B']}", f"A={colours['A']}"])
    assert {i.id: (i.method, i.pair, i.sha256) for i in again.items} == {i.id: (i.method, i.pair, i.sha256)
                                                                         for i in m1.items}  # fmt: skip
    # the fingerprint of the content is in the manifest, the page (so in its exports) and the CSV template
    fp = m1.fingerprint
    assert re.fullmatch(r"fp-[0-9a-f]{16}", fp) and again.fingerprint == fp
    assert manifest_fingerprint(m1) == fp  # what the manifest lists is what the fingerprint covers
    assert len({fp, m2.fingerprint, m3.fingerprint}) == 3
    raw = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert raw["fingerprint"] == fp
    assert _page_data((tmp_path / "s1" / "index.html").read_text())["fingerprint"] == fp
    assert {r["fingerprint"] for r in csv.DictReader((tmp_path / "s1" / "ratings_template.csv").open())} == {fp}

    # a study-1 sheet handed in to study 2 (a sheet from before a --force remake): refused, naming the file
    sheet = tmp_path / "P1.json"
    sheet.write_text(json.dumps(_plain_sheet(m1, "P1", fingerprint=fp)))
    with pytest.raises(HumanEvalError, match=r"P1\.json: rater 'P1': .*another version of study 'pilot'") as exc:
        run_analysis(tmp_path / "s2", [sheet], out=tmp_path / "r")
    assert fp in str(exc.value) and m2.fingerprint in str(exc.value)
    typed = tmp_path / "P2.csv"  # a typed-in paper sheet carries it too (the template's column)
    with typed.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "fingerprint", "rater_id", "position", "item", "match", "realism"])
        for k, r in enumerate(_plain_sheet(m1, "P2")["ratings"], 1):
            w.writerow([m1.study_id, fp, "P2", k, r["item"], r["answers"]["match"], r["answers"]["realism"]])
    loaded = load_ratings([typed], m3)
    assert not loaded.sheets and "another version of study 'pilot'" in str(loaded.problems[0])
    assert str(typed) in str(loaded.problems[0])
    # without a fingerprint (a hand-made file), its item ids are not this study's: refused as well
    bare = tmp_path / "P3.json"
    bare.write_text(json.dumps(_plain_sheet(m1, "P3")))
    loaded = load_ratings([bare], m2)
    assert not loaded.sheets and any("unknown item id(s)" in p.message for p in loaded.problems)
    # in its own study both count
    result, _ = run_analysis(tmp_path / "s1", [sheet, typed, bare], out=tmp_path / "r1", n_boot=20)
    assert result["n_raters_kept"] == 3 and result["problems"] == [] and result["warnings"] == []
    # a manifest edited by hand (a label changed) no longer matches its fingerprint: the report says so
    edited = tmp_path / "edited"
    shutil.copytree(tmp_path / "s1", edited)
    raw_edit = json.loads((edited / "manifest.json").read_text())
    raw_edit["items"][0]["label"] = "kazoo"
    (edited / "manifest.json").write_text(json.dumps(raw_edit))
    result, _ = run_analysis(edited, [sheet], out=tmp_path / "r3", n_boot=20)
    assert any("does not match the items" in w for w in result["warnings"])

    # a manifest written before fingerprints existed still loads and analyses
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "s1", old)
    del raw["fingerprint"]
    (old / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(old).fingerprint == ""
    result, _ = run_analysis(old, [bare, sheet], out=tmp_path / "r2", n_boot=20)
    assert result["n_raters_kept"] == 2 and result["problems"] == []


def test_wilcoxon_drops_zero_differences_so_few_non_zero_ones_get_the_exact_p():
    from scipy.stats import wilcoxon

    # 5 non-zero differences: the exact two-sided p is at least 2/2^5 = 0.0625, however many zeros come with them
    nonzero = np.array([1, 1.5, 1, 2, 1.5])
    for zeros in (0, 8, 9, 30):
        x = np.concatenate([np.full(zeros, 3.0), 3 + nonzero])
        y = np.full(len(x), 3.0)
        r = wilcoxon_paired(x, y)
        assert r["n"] == zeros + 5 and r["n_nonzero"] == 5
        assert r["p"] == pytest.approx(0.0625) and r["statistic"] == 0.0, zeros
        assert "cannot reach p < 0.05" in r["note"]
    # more non-zero differences: the test on them alone, whatever the zeros
    d = np.array([1, -1, 2, 3, 1, 2, 4, -2, 1, 3, 2, 1, 1, 2.0])
    x = np.concatenate([np.full(20, 2.0), 2 + d])
    r = wilcoxon_paired(x, np.full(len(x), 2.0))
    assert r["n_nonzero"] == 14 and r["note"] == ""
    assert r["p"] == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
    assert r["statistic"] == pytest.approx(wilcoxon(d).statistic)


def test_ratings_in_subfolders_are_read_and_hidden_files_are_listed_as_ignored(study, tmp_path, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)
    d = tmp_path / "ratings"
    (d / "late" / "week2").mkdir(parents=True)
    (d / ".cache").mkdir()
    (d / "r1.json").write_text(json.dumps(_synthetic(m, "r1", -1)))
    (d / "late" / "r2.json").write_text(json.dumps(_synthetic(m, "r2", 0)))
    _write_csv(d / "late" / "week2" / "r3.csv", _synthetic(m, "r3", 1))
    (d / ".r4.json").write_text(json.dumps(_synthetic(m, "r4", 0)))  # an editor's or a sync tool's copy
    (d / ".cache" / "r5.json").write_text(json.dumps(_synthetic(m, "r5", 0)))
    (d / "late" / "notes.txt").write_text("r3 rated on paper")
    loaded = load_ratings([d], m)
    assert sorted(s.rater_id for s in loaded.sheets) == ["r1", "r2", "r3"] and loaded.problems == []
    ignored = dict(loaded.ignored)
    assert set(ignored) == {str(d / ".r4.json"), str(d / ".cache"), str(d / "late" / "notes.txt")}
    assert "hidden" in ignored[str(d / ".cache")] and "not .json or .csv" in ignored[str(d / "late" / "notes.txt")]
    # the command line says which files it did not read; the report too; a report written inside the
    # ratings folder is not read back as ratings by the next run
    for _ in range(2):
        assert main(["human-eval", "analyze", str(study), str(d), "-o", str(d / "report"), "--bootstrap", "20"]) == 0
        err = capsys.readouterr().err
        for path in (d / ".r4.json", d / ".cache", d / "late" / "notes.txt"):
            assert f"ignored: {path}" in err
        result = json.loads((d / "report" / "report.json").read_text())
        assert result["n_raters_kept"] == 3 and result["problems"] == []
        assert "notes.txt" in (d / "report" / "report.md").read_text()


def test_a_csv_with_bad_columns_still_counts_its_raters_and_headers_ignore_case(study, tmp_path):
    m = load_manifest(study)
    good = _bad(m, tmp_path, "good", lambda o: None)
    for name, header in (("typo.csv", ["study_id", "rater_id", "position", "item", "match", "realsm"]),
                         ("twice.csv", ["study_id", "rater_id", "position", "item", "match", "realism", "match"])):  # fmt: skip
        bad = tmp_path / name
        with bad.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for rid in ("P1", "P2", "P3"):
                for k, r in enumerate(_synthetic(m, rid, 0)["ratings"], 1):
                    w.writerow([m.study_id, rid, k, r["item"], r["answers"]["match"], r["answers"]["realism"], 3][
                               : len(header)])  # fmt: skip
        _, paths = run_analysis(study, [good, bad], out=tmp_path / f"rep_{bad.stem}", skip_invalid=True, n_boot=20)
        assert "left out as invalid: 3;" in paths["report_md"].read_text(), name
        rows = [r for r in csv.DictReader(paths["raters_csv"].open()) if r["status"] == "invalid (left out)"]
        assert {r["rater_id"] for r in rows} >= {"P1", "P2", "P3"}, name
    # a header typed with capitals or spaces is the same column
    cased = tmp_path / "cased.csv"
    with cased.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Study_ID", " rater_id ", "Position", "ITEM", "Match", " Realism"])
        for k, r in enumerate(_synthetic(m, "P4", 0)["ratings"], 1):
            w.writerow([m.study_id, "P4", k, r["item"], r["answers"]["match"], r["answers"]["realism"]])
    loaded = load_ratings([cased], m)
    assert loaded.problems == [] and [s.rater_id for s in loaded.sheets] == ["P4"]
    both = tmp_path / "both.csv"  # the same column twice in another case: still twice
    both.write_text("study_id,rater_id,item,match,realism,Realism\n")
    assert any("appear twice" in p.message for p in load_ratings([both], m).problems)


def test_the_study_id_depends_on_the_content_not_on_how_its_paths_are_spelled(lab, colours, tmp_path, monkeypatch):
    monkeypatch.chdir(lab["base"])
    made = []
    for k, (data, run) in enumerate([("data", "colours/A"), ("data/", "colours/A/"),
                                     (str(lab["data"]), str(colours["A"])), ("./data", "./colours/../colours/A")]):  # fmt: skip
        m = make_study([f"A={run}"], tmp_path / f"t{k}", n_items=2, seed=0, data_root=data, n_checks=1)
        made.append((m.study_id, m.fingerprint, sorted(m.item_ids)))
    assert all(x == made[0] for x in made), made
    other = make_study([f"A={colours['B']}"], tmp_path / "other", n_items=2, seed=0, data_root="data", n_checks=1)
    assert other.study_id != made[0][0]  # other images: another study


@pytest.mark.parametrize(("option", "value"), [("--size", -8), ("--size", 0), ("--size", 7), ("--image-size", -8),
                                               ("--image-size", 0)])  # fmt: skip
def test_image_sides_below_the_minimum_are_refused_naming_the_option(lab, colours, tmp_path, option, value, capsys):
    from cmav.cli.main import main

    out = tmp_path / "s"
    kw = {"size" if option == "--size" else "image_size": value}
    with pytest.raises(HumanEvalError, match=rf"^{option}: {value}: .*at least 8"):
        make_study([str(colours["A"])], out, n_items=2, data_root=str(lab["data"]), n_checks=1, **kw)
    assert not out.exists()
    assert main(["human-eval", "make", "--runs", str(colours["A"]), "--data", str(lab["data"]), "--items", "2",
                 "--checks", "1", option, str(value), "-o", str(out)]) == 2  # fmt: skip
    assert f"error: {option}: {value}: " in capsys.readouterr().err and not out.exists()


def test_a_paper_rater_given_twice_is_refused(lab, colours, tmp_path, capsys):
    from cmav.cli.main import main

    out = tmp_path / "pp"
    with pytest.raises(HumanEvalError, match=r"^--paper-raters: 'P1 ' is the same rater as 'P1'"):
        make_study([str(colours["A"])], out, n_items=2, data_root=str(lab["data"]), n_checks=1,
                   paper_raters=["P1", "P2", "P1 "])  # fmt: skip
    assert not out.exists()
    assert main(["human-eval", "make", "--runs", str(colours["A"]), "--data", str(lab["data"]), "--items", "2",
                 "--checks", "1", "--paper-raters", "ann", "\tann", "-o", str(out)]) == 2  # fmt: skip
    assert "error: --paper-raters: " in capsys.readouterr().err and not out.exists()
    m = make_study([str(colours["A"])], out, n_items=2, data_root=str(lab["data"]), n_checks=1,
                   paper_raters=["a b", "a_b"])  # fmt: skip  # two raters, one file name: both kept, apart
    assert sorted(p.name for p in (out / "paper").iterdir()) == ["a_b.csv", "a_b.html", "a_b_2.csv", "a_b_2.html"]
    assert {next(csv.DictReader((out / "paper" / n).open()))["rater_id"] for n in ("a_b.csv", "a_b_2.csv")} == {
        "a b", "a_b"} and len(m.items) == 2 * 2 + 1  # fmt: skip


def test_analyze_fails_when_no_rater_is_left_but_still_writes_the_report(study, tmp_path, capsys):
    from cmav.cli.main import main

    m = load_manifest(study)
    careless = _synthetic(m, "careless", 0)
    for r in careless["ratings"]:
        r["answers"] = {"match": 5, "realism": 5}
    (tmp_path / "careless.json").write_text(json.dumps(careless))
    out = tmp_path / "rep"
    assert main(["human-eval", "analyze", str(study), str(tmp_path / "careless.json"), "-o", str(out),
                 "--bootstrap", "20"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no rater was left to analyse" in err and "careless" in err and "attention check" in err
    assert "No rater left to analyse" in (out / "report.md").read_text()
    rows = list(csv.DictReader((out / "raters.csv").open()))
    assert [(r["rater_id"], r["status"]) for r in rows] == [("careless", "dropped (attention checks)")]
    with pytest.raises(HumanEvalError, match="no rater was left to analyse"):
        run_analysis(study, [tmp_path / "careless.json"], out=tmp_path / "rep_api", n_boot=20)
    assert (tmp_path / "rep_api" / "report.md").is_file()
    # every rater invalid (--skip-invalid): the same, and the report lists them
    bad = _bad(m, tmp_path, "bad", lambda o: {**o, "ratings": o["ratings"][1:]})  # an item left unanswered
    out2 = tmp_path / "rep2"
    assert main(["human-eval", "analyze", str(study), str(bad), "--skip-invalid", "-o", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "no rater was left to analyse" in err and "items missing" in err
    rows = list(csv.DictReader((out2 / "raters.csv").open()))
    assert [(r["rater_id"], r["status"]) for r in rows] == [("bad", "invalid (left out)")]


# ---------------------------------------------------------------------- paper sheets and spreadsheet CSVs


def _typed_rows(m, rater: str, order: list[str]) -> list[list]:
    """A typed-in sheet in ``order``: the template's columns, row k the k-th item of ``order``."""
    head = ["study_id", "fingerprint", "rater_id", "position", "item", "match", "realism"]
    return [head] + [[m.study_id, m.fingerprint, rater, k, item, 1 + k % 5, 1 + (k * 2) % 5]
                     for k, item in enumerate(order, 1)]  # fmt: skip


def test_a_paper_raters_sheet_is_typed_into_its_own_csv_and_the_template_order_is_refused(lab, colours, tmp_path):
    out = tmp_path / "pp"
    m = make_study([f"A={colours['A']}"], out, n_items=4, data_root=str(lab["data"]), n_checks=1,
                   paper_raters=["Smith, J."])  # fmt: skip
    assert load_manifest(out).paper_raters == {"Smith, J.": "paper/Smith_J"}  # recorded for the validation
    own = rater_order(m.study_id, "Smith, J.", m.item_ids)
    generic = rater_order(m.study_id, "paper", m.item_ids)
    assert own != generic
    sheet = (out / "paper" / "Smith_J.html").read_text()
    # the sheet names its own CSV, never the template (in the template's order, every answer would sit
    # on another image), and prints every row's item id beside its number, for the typist to check
    assert "paper/Smith_J.csv" in sheet and "ratings_template.csv" not in sheet
    shown = re.findall(r'<div class="num">(\d+)\. <span class="id">item (i[0-9a-f]{8})</span></div>', sheet)
    assert shown == [(str(k), i) for k, i in enumerate(own, 1)]
    assert "ratings_template.csv" in (out / "print.html").read_text()
    rows = list(csv.DictReader((out / "paper" / "Smith_J.csv").open()))
    assert [(r["rater_id"], r["position"], r["item"]) for r in rows] == [("Smith, J.", str(k), i)
                                                                         for k, i in enumerate(own, 1)]  # fmt: skip
    # Smith's sheet typed top to bottom into paper/Smith_J.csv: every answer on its image
    right = tmp_path / "smith_right.csv"
    with right.open("w", newline="") as f:
        csv.writer(f).writerows(_typed_rows(m, "Smith, J.", own))
    loaded = load_ratings([right], m)
    assert loaded.problems == [] and loaded.sheets[0].answers[own[2]] == {"match": 4, "realism": 2}
    # the same answers typed down ratings_template.csv's rows: refused, naming the file and the right CSV
    wrong = tmp_path / "smith_template.csv"
    with wrong.open("w", newline="") as f:
        csv.writer(f).writerows(_typed_rows(m, "Smith, J.", generic))
    loaded = load_ratings([wrong], m)
    assert not loaded.sheets and len(loaded.problems) == 1
    msg = str(loaded.problems[0])
    assert msg.startswith(f"{wrong}: rater 'Smith, J.': ") and "paper/Smith_J.html" in msg
    assert "ratings_template.csv" in msg and "paper/Smith_J.csv" in msg
    with pytest.raises(HumanEvalError, match=r"smith_template\.csv: rater 'Smith, J\.': .* own sheet"):
        run_analysis(out, [wrong], out=tmp_path / "rep")
    # a rater of print.html typed into the template, in its order, still counts
    other = tmp_path / "p05.csv"
    with other.open("w", newline="") as f:
        csv.writer(f).writerows(_typed_rows(m, "P05", generic))
    assert load_ratings([other], m).problems == []
    # a manifest from before paper raters were recorded still loads
    raw = json.loads((out / "manifest.json").read_text())
    del raw["paper_raters"]
    (out / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(out).paper_raters == {}


def test_spreadsheet_csvs_trailing_empty_columns_delimiters_and_encodings_are_read(study, tmp_path):
    m = load_manifest(study)
    rows = _typed_rows(m, "P01", rater_order(m.study_id, "P01", m.item_ids))
    # Excel and LibreOffice write empty cells at the end of every row, the header's too
    trailing = tmp_path / "trailing.csv"
    with trailing.open("w", newline="") as f:
        csv.writer(f).writerows(r + ["", ""] for r in rows)
    loaded = load_ratings([trailing], m)
    assert loaded.problems == [] and [s.rater_id for s in loaded.sheets] == ["P01"]
    # a blank header over cells that are not blank: those cells are something, say where
    notes = tmp_path / "notes.csv"
    with notes.open("w", newline="") as f:
        csv.writer(f).writerows([r + [""] for r in rows[:2]] + [r + ["see page 2"] for r in rows[2:]])
    assert [p.message for p in load_ratings([notes], m).problems] == ["empty column header at column 8"]
    # European Excel: semicolons (with a BOM), or tabs; "Unicode text": UTF-16 with a BOM, tab-separated
    for name, delimiter, encoding in (("semi.csv", ";", "utf-8-sig"), ("tab.csv", "\t", "utf-8"),
                                      ("utf16.csv", "\t", "utf-16")):  # fmt: skip
        path = tmp_path / name
        with path.open("w", newline="", encoding=encoding) as f:
            csv.writer(f, delimiter=delimiter).writerows(rows)
        loaded = load_ratings([path], m)
        assert loaded.problems == [] and [s.rater_id for s in loaded.sheets] == ["P01"], name
        assert loaded.sheets[0].answers == load_ratings([trailing], m).sheets[0].answers, name
    # Windows' own code page is not guessed: the message says what the file is not, and what to save it as
    cp = tmp_path / "cp1252.csv"
    with cp.open("w", newline="", encoding="cp1252") as f:
        csv.writer(f).writerows(rows[:1] + [r[:2] + ["Müller"] + r[3:] for r in rows[1:]])
    problems = [str(p) for p in load_ratings([cp], m).problems]
    assert len(problems) == 1 and problems[0].startswith(f"{cp}: not UTF-8 text") and '"CSV UTF-8"' in problems[0]
    assert "line 2" in problems[0]


def test_a_header_row_repeated_inside_a_csv_is_named_not_read_as_a_rater(study, tmp_path):
    m = load_manifest(study)
    joined = tmp_path / "all.csv"  # two exports joined with cat
    with joined.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows(_typed_rows(m, "P01", rater_order(m.study_id, "P01", m.item_ids)))
        w.writerows(_typed_rows(m, "P02", rater_order(m.study_id, "P02", m.item_ids)))
    loaded = load_ratings([joined], m)
    n = len(m.items) + 2
    assert [str(p) for p in loaded.problems] == [f"{joined}: row {n} repeats the header (files joined?): give "
                                                 "each file on its own, or delete the row"]  # fmt: skip
    assert "rater_id" not in {rid for _, rid, _ in loaded.excluded}
    assert {rid for _, rid, _ in loaded.excluded} == {"", "P01", "P02"}
    # a page export joined after a file with fewer columns: its header is a header too, not a long row
    with joined.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([r[:3] + r[4:] for r in _typed_rows(m, "P01", m.item_ids)])
        w.writerows(_typed_rows(m, "P02", m.item_ids))
    assert [p.message for p in load_ratings([joined], m).problems] == [
        f"row {n} repeats the header (files joined?): give each file on its own, or delete the row"]


@pytest.mark.parametrize("command", ["make", "analyze"])
def test_a_negative_seed_is_refused_naming_the_option(study, lab, colours, tmp_path, command, capsys):
    from cmav.cli.main import main

    good = _bad(load_manifest(study), tmp_path, "good", lambda o: None)
    args = (["make", "--runs", str(colours["A"]), "--data", str(lab["data"]), "--items", "2", "--checks", "1"]
            if command == "make" else ["analyze", str(study), str(good), "--bootstrap", "20"])  # fmt: skip
    assert main(["human-eval", *args, "-o", str(tmp_path / "o"), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seed: -1: ") and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--allowed-failures", "-1"], ["--bootstrap", "0"]])
def test_analysis_settings_out_of_range_are_refused_naming_the_option(study, tmp_path, option, capsys):
    from cmav.cli.main import main

    good = _bad(load_manifest(study), tmp_path, "good", lambda o: None)
    assert main(["human-eval", "analyze", str(study), str(good), *option, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option[0]}: {option[1]}: ") and not (tmp_path / "o").exists()
