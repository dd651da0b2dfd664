"""The browse page (GET /) in real headless Chromium, and the image endpoint behind it.

A small index is built over a corpus of real JPEG files (drawn here, one look
per class) whose embeddings sit near the tiny model's own prompts for each
class, so every class retrieves its own pictures. The service runs on a real
uvicorn with API keys on: the page loads without a key, its data calls need
one (typed into the page, kept in localStorage). Chromium comes from Debian
(`scripts/test_deps.sh`, run by `make test`); only where its binaries are
absent does the browser test skip.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from retrieval_service.config import ServiceConfig
from retrieval_service.http.app import create_app
from service_fixtures import CLASSES, LiveServer, build_task_index

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "browse-test-key"
PER_CLASS = 5
N_DISTRACTORS = 12
COLORS = {"cat": (214, 120, 40), "dog": (60, 120, 200), "car": (40, 160, 90)}
# Chromium must open no connection of its own: the machine's network is closed, and its background
# services (component updates, sync, QUIC probes) would otherwise be refused and slow every start.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1500"]


def _picture(color: tuple[int, int, int], seed: int) -> bytes:
    """A 128 px JPEG with structure (gradient, shapes): never uniform, so pixel checks mean something."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.55, 1.0, 128)[None, :, None]
    img = Image.fromarray((np.array(color)[None, None, :] * ramp * np.ones((128, 1, 1))).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, r = rng.integers(10, 118), rng.integers(10, 118), rng.integers(8, 26)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.rectangle([8, 100, 120, 120], fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_image_index(root: Path, model, model_dir: Path) -> Path:
    """Corpus (retrieval.parquet + images/) -> embedding folder -> index, as `react embed` records it."""
    from react.templates import get_templates
    from index.build import build_index
    from index.embed import write_embedding_folder

    corpus = root / "corpus"
    (corpus / "images").mkdir(parents=True)
    (root / "outside.jpg").write_bytes(_picture((0, 0, 0), 99))   # a real image outside the corpus folder
    (corpus / "notes.txt").write_text("not an image")
    # As in service_fixtures: vectors built through pinv of the class prompts, so a class's pictures score
    # positive on its own prompts and negative on the others' (the tiny model's prompts are nearly alike).
    templates = get_templates("simple")  # the page's default template set
    q = model.encode_texts([t.format(c) for c in CLASSES for t in templates]).numpy().astype(np.float64)
    pinv = np.linalg.pinv(q)
    null = np.eye(q.shape[1]) - pinv @ q
    rng = np.random.default_rng(0)

    def vector(target: np.ndarray) -> np.ndarray:
        v = pinv @ np.repeat(target, len(templates))
        # Null-space noise changes no prompt's score but keeps a class's pictures apart (below the 0.94
        # near-duplicate cut), so each class shows several thumbnails.
        return v + 1.5 * np.linalg.norm(v) * (null @ rng.normal(size=q.shape[1])) / np.sqrt(q.shape[1])

    rows, vecs = [], []
    for ci, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            key = f"{cls}-{i}"
            (corpus / "images" / f"{key}.jpg").write_bytes(_picture(COLORS[cls], 10 * ci + i))
            rows.append({"key": key, "caption": f"a drawn {cls}, number {i}", "image_path": f"images/{key}.jpg"})
            vecs.append(vector(np.where(np.arange(len(CLASSES)) == ci, 1.0, -0.5) * (1 - 0.05 * i)))
    # The picture the page uploads as an example of cat. Its row's vector is the model's own embedding of
    # it, moved within the prompts' span only so that every prompt scores it negative: no text query shows
    # it, and an image query with the same picture finds it first.
    example = _picture((230, 60, 160), 77)
    (corpus / "images" / "cat-example.jpg").write_bytes(example)
    (root / "example.jpg").write_bytes(example)
    pixels = model.preprocess(Image.open(io.BytesIO(example)).convert("RGB")).unsqueeze(0)
    seen = null @ model.encode_images(pixels).numpy()[0].astype(np.float64)
    away = pinv @ np.repeat(-np.ones(len(CLASSES)), len(templates))
    rows.append({"key": "cat-example", "caption": "the cat example's own picture",
                 "image_path": "images/cat-example.jpg"})
    vecs.append(seen + 0.2 * np.linalg.norm(seen) * away / np.linalg.norm(away))
    # Rows no class query comes near: they exist only for the endpoint's refusals.
    bad = {"escape": "../outside.jpg", "absolute": str(root / "outside.jpg"), "text": "notes.txt",
           "gone": "images/missing.jpg", "none": None}
    for i in range(N_DISTRACTORS):
        name = list(bad)[i] if i < len(bad) else f"noise-{i}"
        rows.append({"key": name, "caption": f"unrelated {name}", "image_path": bad.get(name, "images/cat-0.jpg")})
        vecs.append(vector(-np.ones(len(CLASSES))))
    meta = pa.Table.from_pylist([r | {"url": f"http://corpus.invalid/{r['key']}.jpg"} for r in rows])
    pq.write_table(meta, corpus / "retrieval.parquet")
    img = np.stack(vecs).astype(np.float32)
    emb = root / "emb"
    write_embedding_folder(emb, img, img.copy(), meta, part_size=16, model=str(model_dir))
    manifest = json.loads((emb / "embed.json").read_text())
    manifest |= {"model_id": model.identity, "input": str(corpus / "retrieval.parquet"), "input_form": "parquet"}
    (emb / "embed.json").write_text(json.dumps(manifest))
    build_index(emb, root / "index", n_queries=10, k=5)
    return root / "index"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_model, tiny_model_dir):
    root = tmp_path_factory.mktemp("browse")
    index = build_image_index(root, tiny_model, tiny_model_dir)
    cfg = ServiceConfig(indices={"pics": index}, state_dir=root / "state", api_keys=frozenset({KEY}))
    with LiveServer(create_app(cfg)) as live:
        live.rows = {r["key"]: i for i, r in enumerate(pq.read_table(root / "corpus" / "retrieval.parquet").to_pylist())}
        live.example = root / "example.jpg"
        yield live


def _get(live, path: str, key: str | None = KEY) -> httpx.Response:
    return httpx.get(live.url + path, headers={"X-API-Key": key} if key else {}, timeout=30)


def test_page_is_public_and_data_needs_the_key(keyed):
    page = _get(keyed, "/", key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("coverage.js", "javascript"), ("style.css", "css")):
        r = _get(keyed, f"/static/{name}", key=None)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert _get(keyed, "/static/../app.py", key=None).status_code in (401, 404)  # only the page's four files
    for path in ("/v1/indices", "/v1/indices/pics/images", f"/v1/indices/pics/rows/{keyed.rows['cat-0']}/image"):
        assert _get(keyed, path, key=None).status_code == 401, path
        assert _get(keyed, path, key="wrong").status_code == 401, path
    info = _get(keyed, "/v1/indices/pics/images").json()
    assert info["local"] is True and info["form"] == "parquet" and "{row}" in info["image_url"]


def test_image_endpoint_serves_rows_and_refuses_the_rest(keyed, tmp_path, tiny_model, tiny_model_dir):
    r = _get(keyed, f"/v1/indices/pics/rows/{keyed.rows['cat-0']}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (128, 128)
    rows = keyed.rows
    expect = {f"/v1/indices/pics/rows/{rows['escape']}/image": 403,     # image_path ../ leaves the corpus
              f"/v1/indices/pics/rows/{rows['absolute']}/image": 403,   # an absolute path elsewhere
              f"/v1/indices/pics/rows/{rows['text']}/image": 403,       # not an image type
              f"/v1/indices/pics/rows/{rows['gone']}/image": 404,       # file missing
              f"/v1/indices/pics/rows/{rows['none']}/image": 404,       # no image_path
              "/v1/indices/pics/rows/100000/image": 404, "/v1/indices/pics/rows/-1/image": 404,
              "/v1/indices/nope/rows/0/image": 404, "/v1/indices/pics/rows/abc/image": 422,
              "/v1/indices/pics/rows/..%2F..%2Fetc%2Fpasswd/image": 404}  # decoded: no route
    for path, status in expect.items():
        got = _get(keyed, path)
        assert got.status_code == status, (path, got.status_code, got.text)
        assert "error" in got.json() and "outside.jpg" not in got.text
    # An index without an image_path column serves no images, and says why.
    plain = build_task_index(tmp_path, tiny_model, tiny_model_dir)
    with LiveServer(create_app(ServiceConfig(indices={"plain": plain}, state_dir=tmp_path / "state"))) as live:
        info = httpx.get(live.url + "/v1/indices/plain/images").json()
        assert info["local"] is False and "image_path" in info["reason"]
        assert httpx.get(live.url + "/v1/indices/plain/rows/0/image").status_code == 404
        assert httpx.get(live.url + "/").status_code == 200


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason=f"{CHROMIUM} or {CHROMEDRIVER} missing (scripts/test_deps.sh installs them as root)")
def test_browse_page_in_chromium(keyed, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to fail on the page's console errors
    started = time.monotonic()
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(keyed.url + "/")
        # No key yet: the page itself loads, its data call is refused and the page says so.
        wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        driver.find_element(By.CSS_SELECTOR, "#keybox summary").click() if not \
            driver.find_element(By.ID, "keybox").get_attribute("open") else None
        key_input = driver.find_element(By.ID, "apikey")
        key_input.send_keys(KEY)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key_input)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "index")).options) == 1)
        assert driver.execute_script("return localStorage.getItem('react.apiKey')") == KEY

        driver.find_element(By.ID, "classes").send_keys("cat\ndog, car")
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("4")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
        assert driver.execute_script("return document.body.dataset.state") == "done", \
            driver.find_element(By.ID, "status").text

        sections = driver.find_elements(By.CSS_SELECTOR, "#results section.cls")
        assert [s.get_attribute("data-class") for s in sections] == CLASSES
        for sec in sections:
            imgs = sec.find_elements(By.TAG_NAME, "img")
            assert len(imgs) > 0, sec.get_attribute("data-class")
            captions = [c.text for c in sec.find_elements(By.CLASS_NAME, "cap")]
            assert len(captions) == len(imgs) and all(sec.get_attribute("data-class") in c for c in captions)
            sims = [float(s.text) for s in sec.find_elements(By.CLASS_NAME, "sim")]
            assert len(sims) == len(imgs) and all(0 < s <= 1 for s in sims)
        all_imgs = driver.find_elements(By.CSS_SELECTOR, "#results img")
        widths = driver.execute_script("return arguments[0].map(i => i.complete ? i.naturalWidth : 0)", all_imgs)
        assert widths and all(w > 0 for w in widths), widths
        assert all(i.get_attribute("src").startswith("blob:") for i in all_imgs)  # fetched with the key
        table_rows = driver.find_elements(By.CSS_SELECTOR, "#coverage tbody tr")
        assert len(table_rows) == len(CLASSES)
        assert [r.find_element(By.TAG_NAME, "td").text for r in table_rows] == CLASSES
        # The absolute rule: this corpus's vectors are built for the sign of each prompt's score, not its size,
        # so every class's best pairs score ~0.03 against a cut calibrated at ~0.26 on the captions' own
        # neighbours: each row says "not covered", with its count of pairs above the cut (none).
        for row in table_rows:
            cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
            assert "not covered" in cells[-1] and "uncovered" in row.get_attribute("class"), cells
            assert cells[-2] == "0", cells
        assert "Not covered (absolute, cut" in driver.find_element(By.ID, "rule").text

        png = _check_thumbnail_pixels(driver, all_imgs[0])
        shot = os.environ.get("REACT_BROWSE_SCREENSHOT")  # e.g. out/browse.png, to look at the page
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            Path(shot).write_bytes(png)

        # An example image for cat, uploaded and searched by itself: its own picture leads cat's section.
        driver.find_element(By.CSS_SELECTOR, "#examplebox summary").click()
        driver.find_element(By.CSS_SELECTOR, '#examples input[type=file][data-class="cat"]').send_keys(
            str(keyed.example))
        Select(driver.find_element(By.ID, "example-mode")).select_by_value("only")
        k.clear()
        k.send_keys("1")  # the picture's best match only (its next ones include rows whose images are missing)
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "example image" in d.find_element(By.ID, "totals").text
                   or d.execute_script("return document.body.dataset.state") == "error")
        wait.until(lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
        assert driver.execute_script("return document.body.dataset.state") == "done", \
            driver.find_element(By.ID, "status").text
        assert "1 example image (only)" in driver.find_element(By.ID, "totals").text
        cat = driver.find_element(By.CSS_SELECTOR, '#results section.cls[data-class="cat"]')
        first = cat.find_element(By.CSS_SELECTOR, "figure.card")
        assert first.find_element(By.CLASS_NAME, "cap").text == "the cat example's own picture"
        # Its vector keeps only the part of the picture's embedding outside the prompts' span: about 0.66.
        sims = [float(x.text) for x in cat.find_elements(By.CLASS_NAME, "sim")]
        assert len(sims) == 1 and sims[0] > 0.5, sims
        assert first.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("blob:")
        for other in ("dog", "car"):  # still searched by their names
            sec = driver.find_element(By.CSS_SELECTOR, f'#results section.cls[data-class="{other}"]')
            assert all(other in c.text for c in sec.find_elements(By.CLASS_NAME, "cap"))

        # Nothing went wrong in the page but the one refusal it was meant to get (the call made without a key).
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all("status of 401" in m and "/v1/indices" in m for m in errors), errors
        driver.refresh()  # the key survives a reload
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "apikey").get_attribute("value") == KEY)
    finally:
        driver.quit()
    print(f"chromium session: {time.monotonic() - started:.1f} s")


def _check_thumbnail_pixels(driver, img) -> bytes:
    """The first thumbnail, cut from a real screenshot, is a picture: not blank, not the page."""
    driver.execute_script("window.scrollTo(0, 0); arguments[0].scrollIntoView({block: 'center'})", img)
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return [r.left, r.top, r.width, r.height, window.innerWidth]", img)
    png = driver.get_screenshot_as_png()
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    scale = shot.width / rect[4]  # device pixels per CSS pixel
    left, top, width, height = (v * scale for v in rect[:4])
    crop = np.asarray(shot.crop((int(left) + 2, int(top) + 2, int(left + width) - 2, int(top + height) - 2)), float)
    assert crop.shape[0] > 50 and crop.shape[1] > 50, crop.shape
    background = np.asarray(shot.getpixel((3, 3)), float)  # the page's own background, top-left corner
    assert crop.std() > 15, f"thumbnail region is nearly uniform (std {crop.std():.1f})"
    differs = np.abs(crop - background).sum(axis=2) > 30
    assert differs.mean() > 0.5, f"only {differs.mean():.0%} of the thumbnail differs from the page background"
    return png


def test_webdataset_members_are_read_inside_their_shard(tmp_path):
    """img2dataset shards: image_path is ``shard.tar:member``; the shard must lie in the shard folder."""
    import tarfile

    from retrieval_service.corpus_images import tar_member
    from retrieval_service.errors import ServiceError

    data = _picture((10, 200, 10), 1)
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        info = tarfile.TarInfo("000000001.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    shards = tmp_path / "shards"
    shards.mkdir()
    (tmp_path / "00000.tar").rename(shards / "00000.tar")
    assert tar_member(shards.resolve(), "00000.tar:000000001.jpg") == data
    for ref, status in (("../00000.tar:000000001.jpg", 403), ("00000.tar:nope.jpg", 404), ("00000.tar", 404),
                        ("00001.tar:000000001.jpg", 404)):
        with pytest.raises(ServiceError) as err:
            tar_member(shards.resolve(), ref)
        assert err.value.status == status, ref


# Records the body of every POST /v1/retrieve the page makes (the page calls the global fetch at call time).
RECORD_RETRIEVE = """window.sentTasks = [];
const realFetch = window.fetch;
window.fetch = (path, opts) => {
  if (String(path).endsWith('/v1/retrieve')) window.sentTasks.push(opts && opts.body);
  return realFetch(path, opts);
};"""


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason=f"{CHROMIUM} or {CHROMEDRIVER} missing (scripts/test_deps.sh installs them as root)")
def test_aliases_and_quota_in_chromium(keyed, tmp_path):
    """Aliases and a per-class quota typed into the page: the coverage table shows an indented row per alias and
    a cut column, with the figures the API gives for the very request the page sent; an alias line naming no
    typed class is refused in the page and nothing is sent."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    state = lambda d: d.execute_script("return document.body.dataset.state")  # noqa: E731
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(keyed.url + "/")
        driver.execute_script("localStorage.setItem('react.apiKey', arguments[0])", KEY)
        driver.refresh()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#index option"))
        driver.execute_script(RECORD_RETRIEVE)

        def fill(field: str, text: str) -> None:
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(text)

        def run() -> None:
            driver.execute_script("document.body.dataset.state = 'idle'")
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: state(d) in ("done", "error"))
            assert state(driver) == "done", driver.find_element(By.ID, "status").text

        fill("classes", "cat\ndog, car")
        fill("k", "4")
        # bicycle: car's quota of 2 keeps pairs the class name found, so the alias adds nothing and is WEAK
        fill("aliases", "cat|kitty| house  cat\n\ncar|bicycle")
        fill("per-class", "2")
        run()
        sent = [json.loads(b) for b in driver.execute_script("return window.sentTasks")]
        assert len(sent) == 1
        task = sent[0]
        assert task["aliases"] == {"cat": ["kitty", "house cat"], "car": ["bicycle"]} and task["per_class"] == 2
        api = httpx.post(keyed.url + "/v1/retrieve", json=task, headers={"X-API-Key": KEY}, timeout=60)
        assert api.status_code == 200, api.text
        report = api.json()["report"]
        summary = report["summary"]
        assert summary["aliases"] == 3 and summary["per_class"] == 2 and summary["quota_cut"] > 0
        # the data exercises both: a class the quota cut, a WEAK alias
        assert any(c["cut"] > 0 for c in report["classes"])
        assert any(a["weak"] for c in report["classes"] for a in c["aliases"])

        header = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#coverage thead th")]
        assert header[:5] == ["class", "hits", "unique", "excl.", "cut"], header
        rows = driver.find_elements(By.CSS_SELECTOR, "#coverage tbody tr")
        expected = [item for c in report["classes"] for item in [(c, None)] + [(c, a) for a in c["aliases"]]]
        assert len(rows) == len(expected) == 6
        for row, (c, alias) in zip(rows, expected):
            cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
            assert len(cells) == len(header), cells
            kind = row.get_attribute("class").split()
            if alias is None:
                assert "class" in kind and "alias" not in kind
                assert cells[:5] == [c["name"], str(c["hits"]), str(c["unique"]), str(c["exclusive"]), str(c["cut"])]
                assert abs(float(cells[5]) - c["coverage"]) < 6e-4
                continue
            assert "alias" in kind and row.get_attribute("data-alias") == alias["alias"]
            assert cells[:5] == [alias["alias"], str(alias["hits"]), str(alias["unique"]), str(alias["only"]), ""]
            if alias["coverage"] is None:
                assert cells[5] == "\u2013"
            else:
                assert abs(float(cells[5]) - alias["coverage"]) < 6e-4
            badges = [b.text for b in row.find_elements(By.CSS_SELECTOR, "td.flags .badge")]
            assert badges == (["WEAK"] if alias["weak"] else []), (alias, badges)
            # indented and dimmed against its class's row
            name_cell = row.find_element(By.TAG_NAME, "td")
            assert float(name_cell.value_of_css_property("padding-left").rstrip("px")) > 20
            assert name_cell.value_of_css_property("color") != \
                rows[0].find_element(By.TAG_NAME, "td").value_of_css_property("color")
        quota = driver.find_element(By.ID, "quota").text
        assert f"Quota 2 per class: {summary['quota_cut']} class labels cut" in quota, quota
        assert f"{summary['quota_rows_dropped']} pairs left the subset" in quota, quota
        assert f"{summary['rows']} pairs remain" in quota, quota
        assert "+ 3 aliases" in driver.find_element(By.ID, "totals").text

        # An alias line whose class is not one of the typed classes: the page says so and sends nothing.
        fill("aliases", "cat|kitty\nbus|coach")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "bus" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status")
        assert "Aliases line 2" in status.text and "not one of the class names" in status.text, status.text
        assert "error" in status.get_attribute("class").split() and status.is_displayed()
        assert driver.find_element(By.ID, "aliases").get_attribute("aria-invalid") == "true"
        assert len(driver.execute_script("return window.sentTasks")) == 1
        fill("aliases", "cat||kitty")  # an empty name between bars, as the classes file refuses it
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "empty name" in d.find_element(By.ID, "status").text)
        assert len(driver.execute_script("return window.sentTasks")) == 1

        # Neither aliases nor a quota: no alias rows, no cut column, no quota line, neither field sent.
        driver.find_element(By.ID, "aliases").clear()
        driver.find_element(By.ID, "per-class").clear()
        run()
        last = json.loads(driver.execute_script("return window.sentTasks")[-1])
        assert "aliases" not in last and "per_class" not in last
        assert driver.find_element(By.ID, "aliases").get_attribute("aria-invalid") is None
        assert len(driver.find_elements(By.CSS_SELECTOR, "#coverage tbody tr")) == len(CLASSES)
        assert not driver.find_element(By.ID, "cut-col").is_displayed()
        assert not driver.find_element(By.ID, "quota").is_displayed()
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all("status of 401" in m for m in errors), errors  # at most the first, keyless load's refusal
    finally:
        driver.quit()
