"""PDF copies of the rendered pages, printed by headless Chromium: the pages' own print CSS lays them
out, so a PDF matches what a reviewer gets from the browser's print dialog."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from grader.errors import BadInput, GraderFault

CHROMIUM_ENV = "TUNEGRADE_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome")
_TIMEOUT_S = 120
# The pages are self-contained; Chromium's own services (updates, metrics, sync) get no route out.
_OFFLINE = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--no-first-run", "--no-default-browser-check",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


def find_chromium() -> Path | None:
    """$TUNEGRADE_CHROMIUM, else the first Chromium-family browser on PATH."""
    if configured := os.environ.get(CHROMIUM_ENV):
        return Path(configured)
    found = next((path for name in _NAMES if (path := shutil.which(name))), None)
    return Path(found) if found else None


def html_to_pdf(html: Path, pdf: Path) -> Path:
    """Print HTML to PDF in a throwaway profile; BadInput without Chromium, GraderFault when it fails."""
    chromium = find_chromium()
    if chromium is None:
        raise BadInput(f"--pdf needs Chromium: install it (apt-get install chromium) or set ${CHROMIUM_ENV}")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunegrade-chromium-") as profile:
        cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-pdf-header-footer", f"--user-data-dir={profile}", *_OFFLINE,
               f"--print-to-pdf={pdf.resolve()}", html.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise GraderFault(f"Chromium did not print {html} to PDF within {_TIMEOUT_S} s") from exc
        except OSError as exc:
            raise BadInput(f"--pdf needs Chromium: {chromium} does not run ({exc.strerror})") from exc
    if proc.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
        raise GraderFault(f"Chromium could not print {html} to PDF (exit {proc.returncode}): {last}")
    return pdf
