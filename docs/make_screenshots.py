"""Make the report's screenshots, one per page kind, from the demo, as headless Chromium shows them.

    python docs/make_screenshots.py

It runs the demo in a scratch folder (so the pages name `demo/...` as a user's would),
then the report over the demo's influence and self-influence outputs, and takes the top
of each page (`KINDS`): docs/report.png (the main job's page, which `--demo` writes),
docs/report-influence.png and docs/report-self-influence.png. It writes
`docs/report.png.sha256`: for each kind, the hash of the page it showed
(`page_fingerprint`) and of its picture. tests/test_docs.py rebuilds the pages and
compares their fingerprints, so a change to the report fails there until this script
is run again and its pictures committed.

The fingerprint is the page's HTML minus what differs between two runs of the same
code: the embedded PNGs (matplotlib's bytes, which hold the last bits of every value
drawn), the run's time and the model file's hash (Keras writes the save date into the
file), the charts' `data-values` and every number. Numbers, integers too, because the
demo trains its model where it runs: a CPU with other kernels rounds the training apart
(the main page's counts and top rows differed between the machine that took these
pictures and an AVX2 one), so the predictions, the counts and the rows shown are the
machine's. What stays is what a reader sees change: the sections, headings, table rows,
captions, charts and the page's style.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Kind:
    """A page kind: its page (from the demo's folder), the report command that makes it (None: the demo does),
    its picture and the window (CSS pixels) the picture shows of it."""

    name: str
    page: str
    command: tuple[str, ...] | None
    picture: pathlib.Path
    window: str


KINDS = (
    # the main job's page, down to the first saliency maps
    Kind("main", PAGE, None, PICTURE, "1200,1900"),
    # an influence output's page: each query's input beside its proponents and opponents
    Kind("influence", "demo/out/neighbours-report.html",
         ("report", "demo/out/neighbours", "--input", "demo/data/*.parquet"), DOCS / "report-influence.png", "1200,1500"),
    # a self-influence output's page: the ranking, with the rows' inputs and labels
    Kind("self-influence", "demo/out/self_influence-report.html",
         ("report", "demo/out/self_influence", "--input", "demo/data/*.parquet"), DOCS / "report-self-influence.png",
         "1200,1300"),
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def page_fingerprint(html: str) -> str:
    """sha256 of the page with its run-to-run noise taken out (see the module's docstring)."""
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,PNG", html)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", text)
    text = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", text)
    text = re.sub(r"data-values='[^']*'", "data-values", text)
    text = re.sub(r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", "NUM", text)
    return hashlib.sha256(text.encode()).hexdigest()


def _command(folder: str, args) -> None:
    """`beam-gradients ARGS` in `folder`, with this interpreter and this checkout's code."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"make_screenshots: `beam-gradients {' '.join(args)}` failed (exit {done.returncode}): {done.stderr[-2000:]}")


def make_pages(folder: str, demo: bool = True) -> dict[str, str]:
    """Each kind's page in `folder` (the demo run there first, unless it already was): kind name -> its path."""
    if demo:
        _command(folder, ["--demo", "--quiet"])
    for kind in KINDS:
        if kind.command:
            _command(folder, kind.command)
    return {kind.name: os.path.join(folder, kind.page) for kind in KINDS}


def screenshot(page: str, picture: pathlib.Path, window: str) -> None:
    browser = chromium()
    if browser is None:
        sys.exit("make_screenshots: no Chromium here (Debian: apt-get install chromium)")
    done = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={window}", f"--screenshot={picture}",
         f"file://{page}"],
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0 or not picture.is_file():
        sys.exit(f"make_screenshots: Chromium made no picture: {done.stderr[-2000:]}")


def record(pages: dict[str, str]) -> str:
    """The lines of report.png.sha256: per kind, its page's fingerprint and its picture's own sha256."""
    lines = []
    for kind in KINDS:
        lines.append(f"page {kind.name} {page_fingerprint(pathlib.Path(pages[kind.name]).read_text())}")
        lines.append(f"png {kind.name} {hashlib.sha256(kind.picture.read_bytes()).hexdigest()}")
    return "\n".join(lines) + "\n"


def recorded() -> dict[tuple[str, str], str]:
    """(what, kind) -> hash, as report.png.sha256 records them ("page" or "png", a kind's name)."""
    return {(what, kind): value for what, kind, value in (line.split() for line in RECORD.read_text().splitlines())}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="beam-gradients-screenshot-") as folder:
        pages = make_pages(folder)
        for kind in KINDS:
            shot = pathlib.Path(folder) / kind.picture.name
            screenshot(pages[kind.name], shot, kind.window)
            shutil.copyfile(shot, kind.picture)
        RECORD.write_text(record(pages))
    print("wrote " + ", ".join(str(k.picture.relative_to(ROOT)) for k in KINDS) + f" and {RECORD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
