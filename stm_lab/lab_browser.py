"""The lab in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright's Python package, on a
local HTTP server, with every request that is not to that server blocked (and recorded). Used by
``tests/test_lab_browser.py`` and by ``stm-lab lab measure``, which times the lab of a built book and saves
``results/<profile>/lab_browser.json``.

Playwright cannot download its own browsers here (``playwright install`` needs the internet): it drives the
system's Chromium through ``executable_path`` (:func:`stm_lab.book_check.chromium_path`; ``STM_LAB_CHROMIUM``
overrides).
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

from . import results
from .book_check import chromium_path

CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']


def why_no_browser() -> Optional[str]:
    """None when the browser checks can run, else the reason (for pytest's skip)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return 'no Chromium found (apt-get install chromium, or set STM_LAB_CHROMIUM); .ci/run installs it'
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serve(directory) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


class Browser:
    """Headless Chromium with a fresh profile; ``blocked`` lists every request that would have left the machine
    (anything but 127.0.0.1, file: and data:/blob: URLs), all of which are aborted."""

    def __init__(self):
        from playwright.sync_api import sync_playwright
        self.blocked: List[str] = []
        self.console: List[str] = []
        self._pw = sync_playwright().start()
        self._dir = tempfile.mkdtemp(prefix='stm-lab-chromium-')
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                self._dir, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        except Exception:
            self._pw.stop()
            raise
        self.context.route('**/*', self._route)
        self.version = self.context.browser.version if self.context.browser else self._version()

    def _version(self) -> str:
        try:
            out = subprocess.run([chromium_path(), '--version'], capture_output=True, text=True, timeout=30)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return 'chromium'

    def _route(self, route):
        url = route.request.url
        if url.startswith(('http://127.0.0.1:', 'file:', 'data:', 'blob:')):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def page(self):
        page = self.context.new_page()
        page.on('console', lambda m: self.console.append(f'{m.type}: {m.text}'))
        page.on('pageerror', lambda e: self.console.append(f'pageerror: {e}'))
        return page

    def close(self):
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self._dir, ignore_errors=True)


def open_lab(browser: Browser, url: str, timeout_ms: int = 120_000):
    """Open the lab page and wait for the first predictions; returns the page."""
    page = browser.page()
    page.goto(url)
    page.wait_for_function('window.stmLab !== undefined', timeout=timeout_ms)
    page.evaluate('window.stmLab.start()')
    page.wait_for_function('window.stmLab.stats.firstPrediction !== undefined', timeout=timeout_ms)
    return page


def set_slider(page, element_id: str, value) -> None:
    """Move a slider as a reader would (value set, ``input`` event fired) and wait until the page has updated."""
    page.fill(f'#{element_id}', str(value))
    page.evaluate('window.stmLab.idle()')


def displayed_top5(page) -> dict:
    """model -> [(class, probability)] as the page shows them."""
    return page.evaluate('''() => Object.fromEntries([...document.querySelectorAll('.stm-lab-card')].map(c =>
        [c.dataset.model, [...c.querySelectorAll('li')].map(li => [li.dataset.class, Number(li.dataset.prob)])]))''')


def measure(profile: str, html_dir: Path, repeats: int = 20, moves: int = 12, save: bool = True,
            log=print) -> dict:
    """Time the lab of a built book (``make book``): one inference per model (median of ``repeats``), the
    slider-to-five-predictions latency over ``moves`` rotation moves, the first prediction after navigation,
    and the model files' size. Saved as ``results/<profile>/lab_browser.json``."""
    import json
    reason = why_no_browser()
    if reason:
        raise RuntimeError(reason)
    page_path = Path(html_dir) / 'book' / 'generated' / 'lab.html'
    manifest_path = Path(html_dir) / '_static' / 'lab' / 'manifest.json'
    if not page_path.exists() or not manifest_path.exists():
        raise FileNotFoundError(f'no built lab under {html_dir} (run `make book` first)')
    manifest = json.loads(manifest_path.read_text())
    if manifest['profile'] != profile:
        raise ValueError(f'the built lab holds the {manifest["profile"]!r} models, not {profile!r}')
    t0 = time.time()
    load = [round(v, 2) for v in os.getloadavg()]  # other work on the machine slows the one wasm thread
    browser = Browser()
    try:
        with serve(html_dir) as base:
            page = open_lab(browser, f'{base}/book/generated/lab.html')
            first = page.evaluate('window.stmLab.stats.firstPrediction')
            inference = page.evaluate(f'window.stmLab.benchmark({repeats})')
            n0 = page.evaluate('window.stmLab.stats.updates.length')
            for k in range(moves):
                set_slider(page, 'stm-lab-angle', (k + 1) * 45 / moves)
            updates = page.evaluate(f'window.stmLab.stats.updates.slice({n0}).map(u => u.total)')
            page.close()
    finally:
        browser.close()
    if browser.blocked:
        raise RuntimeError(f'the lab requested other sites: {browser.blocked[:5]}')
    rec = dict(browser=browser.version if browser.version[:1].isalpha() else f'Chromium {browser.version}', inference_ms={m: round(v, 2) for m, v in inference.items()},
               slider_update_ms_median=round(statistics.median(updates), 1), slider_update_ms_max=round(max(updates), 1),
               slider_moves=len(updates), first_prediction_ms=round(first, 0),
               model_mb=round(sum(m['bytes'] for m in manifest['models']) / 1e6, 2),
               runtime=f'onnxruntime-web {manifest["runtime"]} (wasm, 1 thread)', img_size=manifest['img_size'],
               loadavg=load, cpu_count=os.cpu_count())
    log(f'[lab measure] {rec}')
    if save:
        results.save_result(profile, 'lab_browser', [rec], dict(analysis='lab_browser', repeats=repeats, moves=moves),
                            results.provenance(profile, wall_time_s=round(time.time() - t0, 1), loadavg=load))
    return rec


def standalone_site(out: Path, profile: str = 'cpu', models=None, log=print) -> dict:
    """A minimal site with the lab page alone, laid out as in the built book (``book/generated/lab.html`` and
    ``_static/``), for tests: the same HTML (:func:`stm_lab.lab.page_html`, :func:`stm_lab.lab.fgsm_html`), code,
    runtime and models as the book, without building the book. Returns the manifest."""
    from . import lab
    from .analysis.run import load
    from .pages.common import install_book_assets
    from .pages.lab import figure_html, lab_consistency_figure, lab_fgsm_figure
    out = Path(out)
    static = out / '_static'
    (static / 'lab' / 'ort').mkdir(parents=True, exist_ok=True)
    if not lab.install_runtime(log):
        raise RuntimeError('ONNX Runtime Web is not installed: npm ci --prefix book/lab')
    for f in lab.RUNTIME_FILES:
        shutil.copyfile(lab.LAB_STATIC / 'ort' / f, static / 'lab' / 'ort' / f)
    for f in lab.CODE_FILES:
        shutil.copyfile(lab.SOURCE_LAB_STATIC / f, static / 'lab' / f)
    shutil.copyfile(install_book_assets(), static / 'plotly.min.js')
    manifest = lab.build(profile, models, out=static / 'lab', log=log)
    inv, adv = (load(w, profile)['records'] for w in ('invariance', 'fgsm'))
    body = (lab.page_html(manifest, figure_html(lab_consistency_figure(inv, manifest['crop_pct']), 'stm-lab-curves'))
            + '\n<h2>FGSM</h2>\n' + lab.fgsm_html(figure_html(lab_fgsm_figure(adv), 'stm-lab-fgsm-curve')))
    page = out / 'book' / 'generated' / 'lab.html'
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>lab</title>'
                    f'<script src="../../_static/plotly.min.js"></script></head>\n<body>\n{body}\n</body></html>\n')
    return manifest
