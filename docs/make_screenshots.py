"""Make docs/report.png: the top of the page `beam-gradients --demo` writes, as headless Chromium shows it.

    python docs/make_screenshots.py

It runs the demo in a scratch folder (so the page names `demo/...` as a user's would),
screenshots the page, and writes `docs/report.png.sha256`: the hash of the page it
showed (`page_fingerprint`) and of the picture. tests/test_docs.py rebuilds the demo's
page and compares its fingerprint, so a change to the report fails there until this
script is run again and its picture committed.

The fingerprint is the page's HTML minus what differs between two runs of the same
code: the embedded PNGs (matplotlib's bytes, which hold the last bits of every value
drawn), the run's time and the model file's hash (Keras writes the save date into the
file), numbers with a fraction (float rounding) and the charts' `data-values`. What
stays is what a reader sees change: the sections, headings, table rows, captions,
charts and the rows they show, and the page's style.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
PICTURE = DOCS / "report.png"
RECORD = DOCS / "report.png.sha256"
PAGE = "demo/out/gradients-report.html"  # where the demo writes its page, from the folder it ran in
WINDOW = "1200,1900"  # CSS pixels: the page at its full width (1100 px), down to the first saliency maps


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def page_fingerprint(html: str) -> str:
    """sha256 of the page with its run-to-run noise taken out (see the module's docstring)."""
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,PNG", html)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", text)
    text = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", text)
    text = re.sub(r"data-values='[^']*'", "data-values", text)
    text = re.sub(r"-?\d[\d,]*\.\d+(?:e[+-]?\d+)?", "NUM", text)
    return hashlib.sha256(text.encode()).hexdigest()


def run_demo(folder: str) -> str:
    """Run `beam-gradients --demo` in `folder` with this interpreter; the path of the page it wrote."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "pipeline", "--demo", "--quiet"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"make_screenshots: the demo failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return os.path.join(folder, PAGE)


def screenshot(page: str, picture: pathlib.Path) -> None:
    browser = chromium()
    if browser is None:
        sys.exit("make_screenshots: no Chromium here (Debian: apt-get install chromium)")
    done = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={WINDOW}", f"--screenshot={picture}",
         f"file://{page}"],
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0 or not picture.is_file():
        sys.exit(f"make_screenshots: Chromium made no picture: {done.stderr[-2000:]}")


def record(page_html: str, picture: pathlib.Path) -> str:
    """The lines of report.png.sha256: the page's fingerprint, and the picture's own sha256."""
    return (f"page {page_fingerprint(page_html)}\n"
            f"png {hashlib.sha256(picture.read_bytes()).hexdigest()}\n")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="beam-gradients-screenshot-") as folder:
        page = run_demo(folder)
        shot = pathlib.Path(folder) / "report.png"
        screenshot(page, shot)
        html = pathlib.Path(page).read_text()
        shutil.copyfile(shot, PICTURE)
    RECORD.write_text(record(html, PICTURE))
    print(f"wrote {PICTURE.relative_to(ROOT)} and {RECORD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
