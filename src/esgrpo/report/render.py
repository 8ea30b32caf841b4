"""Render a report page in headless Chromium (Debian package `chromium`) to check it displays.

`screenshot(page, png)` loads the HTML file and writes a PNG of the first `height` pixels; it returns
None when no Chromium binary is installed (the check is optional: the report itself needs no browser).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


def screenshot(page: str | Path, png: str | Path, width: int = 1200, height: int = 3000,
               timeout: float = 120.0) -> Path | None:
    """Screenshot of `page` (an HTML file) into `png`; None if Chromium is not installed."""
    exe = find_chromium()
    if exe is None:
        return None
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state shared with other runs
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium could not render {page}: {proc.stderr.strip()[-500:]}")
    return png
