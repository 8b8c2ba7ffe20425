"""``goalclip serve`` in a real browser: Debian's chromium driven by selenium (installed by .ci/run).

The server runs as the command a person starts (a subprocess on a free loopback port); the tests
type into the page and read what it shows: the ranked ids equal ``goalclip search``'s, a result's
heatmaps are real images, pairs page and filter, a run's curves and table load, and bad input is a
message on the page while the server keeps answering.

``goalclip serve --demo OUT`` is tested on a tiny demo's output, or on GOALCLIP_SERVE_DEMO=OUT (a real
``goalclip demo`` output); set GOALCLIP_SCREENSHOTS=DIR to save a screenshot of each of its views there
(how docs/serve-*.png are made, from the quick demo).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import numpy as np
import pytest
from tests.conftest import TINY_TRAIN
from PIL import Image

from goalclip.app.backend import query_sentences
from goalclip.cli import main
from goalclip.demo.pipeline import DemoPlan, run_demo

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'goalclip[test]')")
By = pytest.importorskip("selenium.webdriver.common.by").By
WebDriverWait = pytest.importorskip("selenium.webdriver.support.ui").WebDriverWait

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = "no Chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("GOALCLIP_REQUIRE_BROWSER"):  # .ci/run installs the browser: there a skip would hide a failure
        raise RuntimeError(f"GOALCLIP_REQUIRE_BROWSER is set but there is {NO_BROWSER}")
    pytest.skip(NO_BROWSER, allow_module_level=True)

pytestmark = pytest.mark.slow  # a browser, two servers and a training run: about a minute

# the smallest whole demo: every step and every folder it writes, on 8 test images
TINY_DEMO = DemoPlan(n_pretrain=24, n_train=16, n_test=8, image_size=32, width=32, layers=1, pretrain_steps=2,
                     pretrain_batch=8, finetune_epochs=1, finetune_batch=8, finetune_seeds=1)
QUERY = "The picture has a plain white background. A red square is drawn here. Nothing else is in it."
SOURCES = ("detector", "quadrant", "sam")
WAIT_S = 180  # model loading on a busy 2-core CI machine


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    """``goalclip serve ... --port 0`` as a user runs it."""
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, "-m", "goalclip.cli", "serve", "--port", "0", "--device", "cpu",
                                 *args], stdout=subprocess.PIPE, stderr=handle, text=True)


def _url(process: subprocess.Popen, log: Path) -> str:
    """The URL the server printed once it listens."""
    line = process.stdout.readline()
    if "http://127.0.0.1:" not in line:
        process.kill()
        pytest.fail(f"goalclip serve printed {line!r}; stderr: {log.read_text()}")
    return line.split("open ", 1)[1].split()[0]


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory) -> dict:
    """Images to search (a copy: the index is written beside them), a trained run with an eval JSON,
    and 30 mined pairs with varied scores and sources."""
    root = tmp_path_factory.mktemp("serve")
    images = shutil.copytree(tiny_world.root / "images", root / "images")
    run = root / "run"
    flags = {**TINY_TRAIN, "model": tiny_world.model, "data": tiny_world.mined, "out": run, "method": "goal",
             "max_steps": 2, "lr": 3e-3, "val_data": tiny_world.captions}
    flags.pop("progress")
    assert main(["train", "--no-progress", *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items())]) == 0
    assert main(["eval", "--model", str(run), "--data", str(tiny_world.captions), "--no-progress",
                 "--out", str(run / "eval.json")]) == 0
    mined = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    pairs = []
    for n in range(30):
        record = dict(mined[n % len(mined)], id=f"pair{n}", image=str(tiny_world.root / mined[n % len(mined)]["image"]))
        record["local"] = dict(record["local"], score=round(n / 30, 3), source=SOURCES[n % 3])
        pairs.append(record)
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return {"root": root, "images": images, "run": run, "pairs": root / "pairs.jsonl", "records": pairs,
            "models": [str(tiny_world.model), str(run)]}


@pytest.fixture(scope="module")
def servers(world) -> dict:
    """Two servers started together (they load at the same time): the one every view is tested on, and
    one whose only model is not a CLIP (a folder with a BERT config)."""
    args = ["--images", str(world["images"]), "--pairs", str(world["pairs"]), "--runs", str(world["run"])]
    for model in world["models"]:
        args += ["--model", model]
    not_clip = world["root"] / "bert"
    not_clip.mkdir()
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    logs = [world["root"] / "serve.log", world["root"] / "serve-not-clip.log"]
    processes = [_launch(args, logs[0]), _launch(["--model", str(not_clip), "--images", str(world["images"])], logs[1])]
    try:
        urls = [_url(process, log) for process, log in zip(processes, logs)]
        yield {"url": urls[0], "not_clip": not_clip, "not_clip_url": urls[1], "not_clip_process": processes[1]}
    finally:
        for process in processes:
            _stop(process)


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers["url"]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(lambda d: condition(d), message=what)


def _state(driver, element_id: str, *states: str) -> str:
    return _wait(driver, lambda d: d.find_element(By.ID, element_id).get_attribute("data-state") in states
                 and d.find_element(By.ID, element_id).get_attribute("data-state"), f"#{element_id} in {states}")


def _screenshot(driver, name: str) -> None:
    """Save the page as ``DIR/serve-NAME.png`` (256 colours: small enough for the README)."""
    folder = os.environ.get("GOALCLIP_SCREENSHOTS")
    if folder:
        page = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        page.quantize(colors=256, dither=Image.Dither.NONE).save(Path(folder) / f"serve-{name}.png", optimize=True)


def _open(driver, url: str) -> None:
    driver.get(url)
    _state(driver, "models-status", "settled")


def _search(driver, query: str) -> None:
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "search-button").click()


def test_search_ranks_as_goalclip_search_does_for_both_models(world, server, browser, tmp_path):
    _open(browser, server)
    _search(browser, QUERY)
    assert _state(browser, "results", "done", "error") == "done", browser.find_element(By.ID, "message").text
    for m, model in enumerate(world["models"]):
        out = tmp_path / f"search{m}.json"
        assert main(["search", "--model", model, "--images", str(world["images"]), "--query", QUERY, "--k", "8",
                     "--no-progress", "--out", str(out)]) == 0
        expected = [Path(h["path"]).relative_to(world["images"].resolve()).as_posix()
                    for h in json.loads(out.read_text())["results"][0]["hits"]]
        cards = browser.find_elements(By.CSS_SELECTOR, f"#results-{m} .result")
        assert [c.get_attribute("data-id") for c in cards] == expected
        assert all(c.find_element(By.TAG_NAME, "img").get_property("naturalWidth") > 0 for c in cards)


def test_a_result_shows_one_heatmap_per_sentence(server, browser):
    _open(browser, server)
    _search(browser, QUERY)
    _state(browser, "results", "done")
    first = browser.find_element(By.CSS_SELECTOR, "#results-1 .result")
    first.click()
    assert _state(browser, "heatmaps", "done", "error") == "done", browser.find_element(By.ID, "message").text
    assert browser.find_element(By.ID, "view-sentences").is_displayed()
    maps = browser.find_elements(By.CSS_SELECTOR, "#heatmaps img.heatmap")
    assert [m.get_attribute("alt") for m in maps] == [
        "The picture has a plain white background.", "A red square is drawn here.", "Nothing else is in it."]
    pictures = []
    for img in maps:
        assert img.get_property("naturalWidth") == 224 and img.get_property("complete")
        data = img.get_attribute("src").split(",", 1)[1]
        pictures.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    # an overlay, not a blank: many distinct colours
    assert all(p.size == (224, 224) and len(np.unique(np.asarray(p).reshape(-1, 3), axis=0)) > 10 for p in pictures)
    assert first.get_attribute("data-id") in browser.find_element(By.ID, "sentences-head").text


def _pair_ids(driver) -> list[str]:
    _state(driver, "pairs", "done")
    return [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#pairs .pair")]


def test_pairs_page_through_and_filter(world, server, browser):
    _open(browser, server)
    browser.find_element(By.ID, "tab-pairs").click()
    seen = _pair_ids(browser)
    assert seen == [f"pair{n}" for n in range(12)]
    for page in (2, 3):
        browser.find_element(By.ID, "pairs-next").click()
        _wait(browser, lambda d, page=page: d.find_element(By.ID, "pairs-page").text.startswith(f"page {page} of 3 "),
              f"page {page}")
        seen += _pair_ids(browser)
    assert seen == [f"pair{n}" for n in range(30)]
    assert not browser.find_element(By.ID, "pairs-next").is_enabled()
    images = browser.find_elements(By.CSS_SELECTOR, "#pairs .pair img")
    _wait(browser, lambda d: all(i.get_property("complete") for i in images), "pair pictures")
    assert all(i.get_property("naturalWidth") > 0 for i in images)

    browser.find_element(By.ID, "pairs-min").send_keys("0.5")
    browser.find_element(By.CSS_SELECTOR, "#pairs-source option[value='sam']").click()
    browser.find_element(By.ID, "pairs-filter").click()
    _wait(browser, lambda d: "page 1 of 1" in d.find_element(By.ID, "pairs-page").text, "the filtered page")
    expected = [r["id"] for r in world["records"] if r["local"]["score"] >= 0.5 and r["local"]["source"] == "sam"]
    assert _pair_ids(browser) == expected and expected

    browser.find_element(By.ID, "pairs-min").send_keys("x")  # "0.5x": not a number
    browser.find_element(By.ID, "pairs-filter").click()
    _wait(browser, lambda d: "min: '0.5x' is not a number" in d.find_element(By.ID, "message").text, "the message")


def test_runs_show_curves_and_tables_and_a_bad_folder_is_a_message(world, server, browser, tmp_path):
    _open(browser, server)
    browser.find_element(By.ID, "tab-runs").click()
    assert _state(browser, "runs-table", "done", "error") == "done", browser.find_element(By.ID, "message").text
    plot = browser.find_element(By.ID, "runs-plot")
    _wait(browser, lambda d: plot.get_property("complete") and plot.get_property("naturalWidth") > 0, "the curves")
    rows = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tr")[1:]]
    header = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#runs-table th")]
    record = dict(zip(header, rows[0]))
    assert record["run"] == "run" and record["steps"] == "2" and record["method"] == "goal"
    val = [json.loads(line) for line in (world["run"] / "metrics.jsonl").read_text().splitlines() if "val" in line]
    assert float(record["val t2i@1"]) == pytest.approx(val[-1]["val"]["t2i@1"], abs=1e-3)
    evals = browser.find_elements(By.CSS_SELECTOR, "#evals-table tr")
    assert len(evals) == 2 and "eval.json" in evals[1].text

    missing = tmp_path / "no-such-run"
    browser.find_element(By.ID, "runs-add").send_keys(str(missing))
    browser.find_element(By.ID, "runs-add-button").click()
    _wait(browser, lambda d: f"{missing}: no such run folder" in d.find_element(By.ID, "message").text, "the message")
    with urlopen(server + "api/status", timeout=30) as answer:  # still serving
        assert json.load(answer)["runs"] == [str(world["run"])]


def test_a_model_that_is_not_clip_is_a_message_and_the_server_keeps_running(servers, browser):
    not_clip = str(servers["not_clip"])
    _open(browser, servers["not_clip_url"])
    _wait(browser, lambda d: f"{not_clip}: a 'bert' checkpoint" in d.find_element(By.ID, "message").text,
          "the load error")
    _search(browser, "")
    _wait(browser, lambda d: "the query is empty" in d.find_element(By.ID, "message").text, "the empty query")
    _search(browser, QUERY)
    _state(browser, "results", "done")
    assert not_clip in browser.find_element(By.CSS_SELECTOR, "#results-0 .error").text
    assert servers["not_clip_process"].poll() is None


def test_only_loopback_host_names_are_answered(server):
    with urlopen(server + "api/status", timeout=30) as answer:
        assert answer.status == 200
    with pytest.raises(HTTPError) as refused:  # what a DNS-rebinding page would send
        urlopen(Request(server + "api/status", headers={"Host": "attacker.example"}), timeout=30)
    assert refused.value.code == 400


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory) -> tuple[Path, str]:
    """``goalclip serve --demo OUT``, as README says to serve a demo, on the output of a tiny demo run (or of
    the demo at GOALCLIP_SERVE_DEMO)."""
    logs = tmp_path_factory.mktemp("demo")
    out = Path(os.environ.get("GOALCLIP_SERVE_DEMO") or logs / "out")
    if "GOALCLIP_SERVE_DEMO" not in os.environ:
        run_demo(out, plan=TINY_DEMO, progress=False)
    log = logs / "serve.log"
    process = _launch(["--demo", str(out)], log)
    try:
        yield out, _url(process, log)
    finally:
        _stop(process)


def test_serve_demo_shows_the_four_views_of_a_demo_output(demo_server, browser, tmp_path):
    out, url = demo_server
    _open(browser, url)
    tests = [json.loads(line) for line in (out / "world" / "test.jsonl").read_text().splitlines()]
    n, k = len(tests), min(10, len(tests))  # the page asks for the top 10
    status = browser.find_element(By.ID, "models-status").text
    assert status == f"pretrained: ready ({n} images) | goal/seed0: ready ({n} images)"
    query = tests[0]["caption"]
    _search(browser, query)
    assert _state(browser, "results", "done", "error") == "done", browser.find_element(By.ID, "message").text
    assert [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#results h3")] == ["pretrained", "goal/seed0"]
    gallery = tmp_path / "test-images"
    gallery.mkdir()
    for record in tests:
        shutil.copy(out / "world" / record["image"], gallery)
    found = tmp_path / "search.json"
    assert main(["search", "--model", str(out / "models" / "goal" / "seed0"), "--images", str(gallery), "--query",
                 query, "--k", str(k), "--no-progress", "--out", str(found)]) == 0
    expected = [Path(h["path"]).name for h in json.loads(found.read_text())["results"][0]["hits"]]
    goal_hits = browser.find_elements(By.CSS_SELECTOR, "#results-1 .result")
    assert [c.get_attribute("data-id") for c in goal_hits] == expected
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results-0 .result")) == k
    _screenshot(browser, "search")

    browser.find_element(By.CSS_SELECTOR, "#results-1 .result").click()
    assert _state(browser, "heatmaps", "done", "error") == "done", browser.find_element(By.ID, "message").text
    maps = browser.find_elements(By.CSS_SELECTOR, "#heatmaps img.heatmap")
    assert [m.get_attribute("alt") for m in maps] == query_sentences(query)
    _screenshot(browser, "sentences")

    browser.find_element(By.ID, "tab-pairs").click()
    mined = [json.loads(line) for line in (out / "mined" / "train.jsonl").read_text().splitlines()]
    assert _pair_ids(browser) == [r["id"] for r in mined if r.get("local")][:12]
    assert f"of {sum(1 for r in mined if r.get('local'))} pairs" in browser.find_element(By.ID, "pairs-page").text
    _screenshot(browser, "pairs")

    browser.find_element(By.ID, "tab-runs").click()
    assert _state(browser, "runs-table", "done", "error") == "done", browser.find_element(By.ID, "message").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tr")[1:]
    runs = [r.find_element(By.TAG_NAME, "td").text for r in rows]
    fine_tunes = sorted(p for p in (out / "models").glob("*/seed*") if (p / "train_config.json").is_file())
    assert runs == ["pretrained", *(f"{p.parent.name}/{p.name}" for p in fine_tunes)]
    assert runs[1:5] == ["global/seed0", "goal/seed0", "local/seed0", "wo-tsl/seed0"]
    # the demo's evaluation (metrics.json at its root) beside the runs it scored, one row per model
    header = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#evals-table th")]
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
             for r in browser.find_elements(By.CSS_SELECTOR, "#evals-table tr")[1:]]
    scored = json.loads((out / "metrics.json").read_text())["models"]
    assert [row[header.index("run")] for row in cells] == runs[: len(scored)]
    goal_row = cells[runs.index("goal/seed0")]
    goal_scores = next(r["metrics"] for r in scored if r["model"].endswith("goal/seed0"))
    assert float(goal_row[header.index("t2i@1")]) == pytest.approx(goal_scores["t2i@1"], abs=0.01)
    plot = browser.find_element(By.ID, "runs-plot")
    _wait(browser, lambda d: plot.get_property("complete") and plot.get_property("naturalWidth") > 0, "the curves")
    _screenshot(browser, "runs")
