"""Both report pages as a browser shows them: headless Chromium at 1280 px, offline, every figure
decoded, nothing wider than the window, and the marketing page's data-quality banner on top."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipelines.catalog import Catalog
from tests.test_export_fixture import exported_project, mlflow_store  # noqa: F401
from tests.test_report import SECTION_IDS
from tests.test_report_marketing import MARKETING_SECTIONS

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip

# Appended to a copy of the report: after load, write what the page saw into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const external = performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith("data:"));
  const banner = document.getElementById("data-quality-banner");
  const first = document.querySelector("section");
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({
    images, external, height: document.body.scrollHeight,
    width: document.documentElement.scrollWidth, viewport: window.innerWidth,
    banner: banner ? {top: banner.getBoundingClientRect().top, height: banner.offsetHeight} : null,
    firstSection: first ? first.getBoundingClientRect().top : null,
  });
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir()
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


PAGES = {  # page -> (catalog key, section ids, embedded figures in the hand-made project)
    "marketing": ("report_html", MARKETING_SECTIONS, 1),
    "models": ("models_html", SECTION_IDS, 10),
}


def probe_page(binary: str, html: str, tmp_path: Path) -> tuple[dict, str]:
    """Load the page at 1280 px in headless Chromium; what the probe saw, and the DOM."""
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = run_chromium(binary, tmp_path / "profile-dom", "--window-size=1280,1000", "--virtual-time-budget=10000",
                       "--dump-dom", probed.as_uri()).stdout  # fmt: skip
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    return probe, dom


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_renders_offline_at_1280_px_with_every_figure_decoded(exported_project, tmp_path, page):
    binary = chromium()
    key, sections, figures = PAGES[page]
    html = Catalog(exported_project).path(key).read_text()
    probe, dom = probe_page(binary, html, tmp_path)
    assert len(probe["images"]) == html.count("<img ") == figures
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in probe["images"])
    assert probe["external"] == []
    assert probe["viewport"] == 1280 and probe["width"] <= 1280  # no horizontal scrolling
    for section in sections:
        assert f'<section id="{section}">' in dom

    shot = tmp_path / f"{page}.png"
    run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2400",
                 (tmp_path / "probed.html").as_uri())  # fmt: skip
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # figures and text, not a blank page
    assert probe["height"] > 2400  # longer than one screen: every section laid out


def test_banner_is_on_top_when_the_quarantine_is_not_empty(exported_project, tmp_path):
    binary = chromium()
    html = Catalog(exported_project).REPORT_HTML.read_text()  # the hand-made ingest rejected 10 rows
    probe, _ = probe_page(binary, html, tmp_path)
    assert probe["banner"] is not None and probe["banner"]["height"] > 0
    assert probe["banner"]["top"] < probe["firstSection"] < 1000  # seen without scrolling, above every section
