"""Open every page of the built book in headless Chromium, as a reader would, at a desktop and a phone width, with
every host but the local server blocked, and report what a reader would trip over:

- console errors and uncaught exceptions;
- requests to other hosts (the book must work offline);
- requests to the book's own server that fail (HTTP status 400 or more), as the server logged them: a missing asset,
  or the page's icon (``/favicon.ico`` where it names none), which the check asks for itself, as browsers do (Chromium
  makes no icon request while Playwright routes requests);
- elements wider than the viewport (that widen the page: content inside a scrolling container does not count);
- at the desktop width, tables wider than their column (a reader would have to scroll them sideways);
- plotly figures that did not draw.

    python -m stm_lab.book_check [_build/html] [--shots DIR] [--preview PNG]

``--preview`` also saves the lab page's controls and top-5 bars as a small PNG: the landing page's picture of the lab,
made from the cpu-profile book with ``python -m stm_lab.book_check _build/html --preview book/_static/lab-preview.png``.

Needs Playwright's Python package and a Chromium (Debian's ``chromium``; ``STM_LAB_CHROMIUM`` overrides the path).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import io
import os
import shutil
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

WIDTHS = {'desktop': 1400, 'phone': 390}

# elements whose right edge passes the viewport and that are not inside a box that scrolls horizontally
_OVERFLOW_JS = """() => {
  const w = document.documentElement.clientWidth, out = [];
  const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX; if (s === 'auto' || s === 'scroll' || s === 'hidden') return true; }
    return false; };
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > w + 1 && getComputedStyle(el).position !== 'fixed' && !scrolls(el))
      out.push(`${el.tagName.toLowerCase()}${el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : ''} right=${Math.round(r.right)}`);
  }
  return out.slice(0, 5);
}"""
# tables wider than the column they sit in (they would need sideways scrolling)
_TABLES_JS = """() => Array.from(document.querySelectorAll('article table')).filter(
  t => t.getBoundingClientRect().width > t.parentElement.clientWidth + 1).map(
  t => (t.querySelector('th') || t).textContent.trim().slice(0, 40))"""
_ICON_JS = """() => { const l = document.querySelector('link[rel~="icon"]'); return l ? l.href : null; }"""
_PLOTS_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => !!d.querySelector('.main-svg'))"""


def chromium_path() -> Optional[str]:
    return os.environ.get('STM_LAB_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')


def pages_of(html_dir: Path) -> List[str]:
    skip = {'search.html', 'genindex.html', 'index.html'}
    return sorted(str(p.relative_to(html_dir)) for p in html_dir.rglob('*.html')
                  if p.name not in skip and '_static' not in p.parts and '_sources' not in p.parts)


def check_book(html_dir, shots: Optional[Path] = None) -> Dict[str, List[str]]:
    """``{page@width: [problems]}`` for every page (empty lists when a page is clean)."""
    from playwright.sync_api import sync_playwright
    html_dir = Path(html_dir)
    failed: List[str] = []  # the server's failed requests since the current page was opened
    handler = functools.partial(_QuietHandler, directory=str(html_dir), failed=failed)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{server.server_address[1]}/'
    report = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=['--no-sandbox'])
            for label, width in WIDTHS.items():
                ctx = browser.new_context(viewport={'width': width, 'height': 900})
                outside: List[str] = []
                ctx.route('**/*', lambda route: route.continue_() if route.request.url.startswith(base)
                          else (outside.append(route.request.url), route.abort()))
                page = ctx.new_page()
                errors: List[str] = []
                page.on('console', lambda m: errors.append(f'console: {m.text}') if m.type == 'error' else None)
                page.on('pageerror', lambda e: errors.append(f'exception: {e}'))
                for name in pages_of(html_dir):
                    errors.clear()
                    outside.clear()
                    failed.clear()
                    page.goto(base + name, wait_until='load')
                    page.wait_for_timeout(500)
                    icon = page.evaluate(_ICON_JS) or base + 'favicon.ico'
                    if icon.startswith(base):
                        _get(icon)  # a failure lands in `failed`
                    problems = list(errors)
                    problems += [f'request off the machine: {u}' for u in dict.fromkeys(outside)]
                    problems += [f'request failed: HTTP {f}' for f in dict.fromkeys(failed)]
                    problems += [f'wider than the {width}px viewport: {e}' for e in page.evaluate(_OVERFLOW_JS)]
                    if label == 'desktop':
                        problems += [f'table wider than its column: "{t}"' for t in page.evaluate(_TABLES_JS)]
                    drawn = page.evaluate(_PLOTS_JS)
                    problems += [f'{drawn.count(False)} of {len(drawn)} plotly figures not drawn'] if False in drawn else []
                    report[f'{name}@{label}'] = problems
                    if shots:
                        shots.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(shots / f'{name.replace("/", "_")[:-5]}_{width}.png'), full_page=True)
                ctx.close()
            browser.close()
    finally:
        server.shutdown()
    return report


def _get(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=30).close()
    except urllib.error.HTTPError:
        pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, failed: Optional[List[str]] = None, **kwargs):
        self.failed = failed  # before the base class's __init__, which handles the request
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def log_request(self, code='-', size='-'):
        if self.failed is not None and isinstance(code, int) and code >= 400:
            self.failed.append(f'{int(code)} {self.path}')

    def copyfile(self, source, outputfile):
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):  # the browser moved on to the next page mid-file
            pass


def lab_preview(html_dir, out: Path, width: int = 1400, colors: int = 128) -> Path:
    """Save the lab of the built book (``book/generated/lab.html``) as a PNG once its first top-5 are shown: the
    lab's box (photos, the models' view, sliders, the five cards) at the desktop width, without the status line
    (it holds timings), in ``colors`` colors so it stays small. Returns ``out``."""
    from PIL import Image
    from .lab_browser import Browser, open_lab, serve
    out = Path(out)
    browser = Browser()
    try:
        with serve(html_dir) as base:
            page = open_lab(browser, f'{base}/book/generated/lab.html')
            page.set_viewport_size({'width': width, 'height': 2400})  # the whole lab in view: the shot is not cut
            page.evaluate("document.getElementById('stm-lab-status').style.display = 'none'")
            shot = page.locator('#stm-lab').screenshot(animations='disabled')
            page.close()
    finally:
        browser.close()
    if browser.blocked:
        raise RuntimeError(f'the lab requested other sites: {browser.blocked[:5]}')
    img = Image.open(io.BytesIO(shot)).convert('RGB').quantize(colors, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('html', nargs='?', default='_build/html')
    ap.add_argument('--shots', type=Path, help='also save a full-page screenshot of every page here')
    ap.add_argument('--preview', type=Path, help="also save the lab page's controls and top-5 bars as this PNG")
    args = ap.parse_args(argv)
    if not chromium_path():
        print('no Chromium found (install Debian\'s chromium, or set STM_LAB_CHROMIUM)', file=sys.stderr)
        return 2
    report = check_book(args.html, args.shots)
    bad = {k: v for k, v in report.items() if v}
    for key, problems in report.items():
        print(f'{"ok  " if not problems else "FAIL"} {key}')
        for p in problems:
            print(f'       {p}')
    print(f'{len(report) - len(bad)} of {len(report)} page views clean')
    if args.preview:
        out = lab_preview(args.html, args.preview)
        print(f'lab preview: {out} ({out.stat().st_size / 1e3:.0f} kB)')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
