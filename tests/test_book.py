"""The book as a reader gets it: built at the smoke profile and opened in headless Chromium at a desktop and a phone
width with every outside host blocked (stm_lab.book_check). Skipped, with the reason, where no Chromium is installed
(.ci/run installs Debian's)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stm_lab import book_check
from stm_lab.results import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(book_check.chromium_path() is None,
                                                  reason="no Chromium (Debian's chromium package; .ci/run installs it)")]


@pytest.fixture(scope='module')
def smoke_book(tmp_path_factory, smoke_results):
    """A copy of the book's sources, its notebooks executed at the smoke profile (on the session's smoke results),
    built with warnings as errors."""
    from stm_lab import cli
    from stm_lab.pages.common import install_book_assets
    root = tmp_path_factory.mktemp('book')
    install_book_assets()
    for name in ('_config.yml', '_toc.yml'):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / 'book', root / 'book', ignore=shutil.ignore_patterns('generated', 'node_modules'))
    mp = pytest.MonkeyPatch()
    mp.setenv('STM_LAB_LAB_DIR', str(root / 'book' / '_static' / 'lab'))  # the lab's models for this copy
    try:
        assert cli.main(['notebooks', '--profile', 'smoke', '--out', str(root / 'book' / 'generated')]) == 0
    finally:
        mp.undo()
    jb = [str(Path(sys.executable).parent / 'jupyter-book'), 'build', str(root), '-W', '--keep-going']
    out = subprocess.run(jb, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root / '_build' / 'html'


def test_every_page_is_clean_at_desktop_and_phone_width(smoke_book):
    report = book_check.check_book(smoke_book)
    pages = {k.split('@')[0] for k in report}
    assert {'book/intro.html', 'book/generated/findings.html', 'book/generated/ablations.html'} <= pages
    assert len(report) == 2 * len(pages)
    bad = {k: v for k, v in report.items() if v}
    assert not bad, bad


def test_pages_without_figures_do_not_load_plotly(smoke_book):
    intro = (smoke_book / 'book' / 'intro.html').read_text()
    training = (smoke_book / 'book' / 'generated' / 'training.html').read_text()
    assert 'plotly.min.js' not in intro and 'plotly.min.js' in training
    for page in (intro, training):
        assert page.count('THEBE_JS_URL =') <= 1 and 'cdnjs.cloudflare.com' not in page


def test_the_check_sees_a_page_that_widens_and_calls_out(tmp_path):
    """The checker itself: a page with a too-wide element, a request to another host and an exception fails."""
    (tmp_path / 'bad.html').write_text(
        '<html><body><div style="width:2000px">wide</div><img src="https://example.com/x.png">'
        '<script>throw new Error("boom")</script></body></html>')
    report = book_check.check_book(tmp_path)
    problems = ' '.join(report['bad.html@phone'])
    assert 'wider than' in problems and 'off the machine' in problems and 'boom' in problems


def test_the_check_sees_a_missing_asset(tmp_path):
    """The checker itself: a request to the book's own server that fails (a missing image; and the /favicon.ico that
    Chromium asks for when a page names no icon, a request the page itself never sees) is a problem; the same page
    with both files present is clean."""
    (tmp_path / 'page.html').write_text('<html><body><p>text</p><img src="pic.png" alt="a picture"></body></html>')
    report = book_check.check_book(tmp_path)
    for width in book_check.WIDTHS:
        problems = report[f'page.html@{width}']
        assert 'request failed: HTTP 404 /pic.png' in problems and 'request failed: HTTP 404 /favicon.ico' in problems
    from PIL import Image
    Image.new('RGB', (8, 8), 'white').save(tmp_path / 'pic.png')
    Image.new('RGB', (16, 16), 'white').save(tmp_path / 'favicon.ico')
    assert book_check.check_book(tmp_path) == {f'page.html@{w}': [] for w in book_check.WIDTHS}
