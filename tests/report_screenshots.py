"""Screenshots of a sweep's report for the docs: one PNG per section, taken in headless Chromium.

    python -m tests.report_screenshots ranksearch-runs/sweeps/quickstart-families docs/ --trial f06dc45d

writes ``docs/report-<section>.png`` (overview, history, tradeoff, importance, parallel, slices, curves,
allocation, trials). docs/report.md says which sweep the checked-in images come from and how it was run.
tests/test_report.py runs this on a synthetic sweep so the script keeps working.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

SECTIONS = ("history", "tradeoff", "importance", "parallel", "slices", "curves", "allocation", "trials")


def _driver(width: int = 1400, height: int = 1000):  # sections taller than this are shot in a taller window
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)


def screenshots(
    sweep: str | Path, out_dir: str | Path, trial: str | None = None, prefix: str = "report",
    sections: tuple[str, ...] = SECTIONS,
) -> list[Path]:  # fmt: skip
    """Build the report of ``sweep`` (into a scratch file) and save ``<prefix>-overview.png`` and one
    ``<prefix>-<section>.png`` per section in ``out_dir``.

    ``trial``: the trial whose details the drill-down shot shows (default: the leaderboard's first).
    """
    import tempfile

    from selenium.webdriver.support.ui import WebDriverWait

    from ranksearch.report.html import build_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="rs-shots-") as tmp:
        report = build_report(sweep, Path(tmp) / "report.html")
        driver = _driver()
        try:
            url = report.path.resolve().as_uri() + (f"#trial-{trial}" if trial else "")
            driver.get(url)
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return document.body.dataset.rendered") == "true"
            )
            # the sticky navigation bar would sit on top of every section shot
            driver.execute_script(
                "document.querySelector('nav').style.position = 'static'; window.scrollTo(0, 0)"
            )
            time.sleep(0.3)
            path = out_dir / f"{prefix}-overview.png"
            driver.save_screenshot(str(path))
            shots.append(path)
            driver.set_window_size(1400, 3000)  # every section fits: an element shot is cut at the window
            time.sleep(0.5)
            for sid in sections:
                found = driver.find_elements("id", sid)
                if not found:
                    continue
                driver.execute_script("arguments[0].scrollIntoView()", found[0])
                time.sleep(0.2)
                path = out_dir / f"{prefix}-{sid}.png"
                found[0].screenshot(str(path))
                shots.append(path)
        finally:
            driver.quit()
    return shots


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="screenshots of a sweep's report, one PNG per section")
    parser.add_argument("sweep", help="sweep folder")
    parser.add_argument("out_dir", help="where the PNGs go (docs/)")
    parser.add_argument("--trial", help="the trial the drill-down shows (default: the leaderboard's first)")
    parser.add_argument("--prefix", default="report", help="file names: PREFIX-SECTION.png")
    parser.add_argument("--sections", help="comma-separated section ids (default: all)")
    args = parser.parse_args()
    chosen = tuple(args.sections.split(",")) if args.sections else SECTIONS
    for p in screenshots(args.sweep, args.out_dir, args.trial, args.prefix, chosen):
        print(p)
