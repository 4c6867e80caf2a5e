"""The report as a browser shows it: headless Chromium, offline, every figure decoded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipelines import paths
from tests.test_export_fixture import exported_project, mlflow_store  # noqa: F401
from tests.test_report import SECTION_IDS

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
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({images, external, height: document.body.scrollHeight});
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


def test_report_renders_offline_with_every_figure_decoded(exported_project, tmp_path):
    binary = chromium()
    html = (exported_project / paths.REPORT_HTML).read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))

    dom = run_chromium(binary, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert len(probe["images"]) == html.count("<img ") == 10
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in probe["images"])
    assert probe["external"] == []
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in dom

    shot = tmp_path / "report.png"
    run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,4000", probed.as_uri())
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500  # figures and text, not a blank page
    assert probe["height"] > 4000  # the page is longer than one screen: every section laid out
