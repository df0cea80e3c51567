"""The lab as an app: ``Lab`` displays itself in a notebook, the Voila app (notebooks/app/lab_app.ipynb) serves it
and a headless Chromium moves a slider and sees the kernel's new predictions, and the book shows no launch buttons
while ``repository.url`` is unset in _config.yml."""
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / 'notebooks' / 'app' / 'lab_app.ipynb'
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'


# ------------------------------------------------------------------------------------------- Lab in a notebook

def test_lab_as_a_cells_last_line_shows_its_widget():
    pytest.importorskip('ipywidgets')
    from IPython.core.formatters import DisplayFormatter
    from stm_lab.widgets import Lab
    lab = Lab(['u_dwconv_test'], img_size=32)
    data, _ = DisplayFormatter().format(lab)  # what IPython's display hook sends for `Lab(...)` as a last line
    assert WIDGET_MIME in data, sorted(data)
    assert data[WIDGET_MIME]['model_id'] == lab.show().model_id
    assert 'stm_lab.widgets.Lab object' not in data['text/plain']
    # every display shows the same widget (its controls stay in step), and show() is that widget
    assert DisplayFormatter().format(lab)[0][WIDGET_MIME]['model_id'] == lab.show().model_id
    assert lab.show() is lab.show()


def test_app_notebook_is_clean_and_kept_out_of_the_book():
    import json
    nb = json.loads(APP.read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert not any(c.get('outputs') or c.get('execution_count') for c in code), 'strip the outputs of the app'
    assert ''.join(code[-1]['source']).rstrip().splitlines()[-1].startswith('Lab()')
    # `stm-lab notebooks` executes notebooks/*.ipynb (top level only) for the book; the app is not one of them
    assert APP.parent != ROOT / 'notebooks' and 'app/' not in (ROOT / '_toc.yml').read_text()


# ------------------------------------------------------------------------------------------- the Voila app

def _why_no_app():
    if importlib.util.find_spec('voila') is None:
        return "Voila is not installed (pip install -e '.[lab]')"
    from stm_lab.lab_browser import why_no_browser
    return why_no_browser()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def voila(tmp_path, timeout=120):
    """The app served by Voila on a free port of 127.0.0.1; yields its URL. Jupyter's config, data and runtime
    folders are tmp_path's (Voila writes a notebook-signing key into the data folder)."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1', JUPYTER_CONFIG_DIR=str(tmp_path / 'jconfig'),
               JUPYTER_DATA_DIR=str(tmp_path / 'jdata'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'jruntime'),
               IPYTHONDIR=str(tmp_path / 'ipython'))
    log = open(tmp_path / 'voila.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'voila', str(APP), '--no-browser', f'--port={port}',
                             '--Voila.ip=127.0.0.1', '--Voila.port_retries=0'],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f'voila exited ({proc.returncode}): {(tmp_path / "voila.log").read_text()[-2000:]}')
            try:
                urllib.request.urlopen(url + 'voila/static/voila.js', timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f'voila did not answer in {timeout} s')
                time.sleep(0.5)
        yield url
    finally:
        # voila and the kernels it started are in their own process group: stop them all
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _set_slider(page, label: str, value) -> None:
    """Type a value into the slider's readout, as a reader can (ipywidgets sends it to the kernel on Enter)."""
    readout = page.locator('.widget-slider', has=page.locator(f'label:text-is("{label}")')).locator('.widget-readout')
    readout.click()
    page.keyboard.press('Control+A')
    page.keyboard.type(str(value))
    page.keyboard.press('Enter')


def _expected(lab, angle):
    lab.w_angle.value = angle
    return {m: [[c, p] for c, p in rows] for m, rows in lab.state()['top5'].items()}


def _assert_same(shown, want):
    assert list(shown) == list(want)
    for model in want:
        assert [c for c, _ in shown[model]] == [c for c, _ in want[model]], model
        assert [p for _, p in shown[model]] == pytest.approx([p for _, p in want[model]], abs=1e-5), model


@pytest.mark.e2e
@pytest.mark.skipif(_why_no_app() is not None, reason=str(_why_no_app()))
def test_voila_app_in_chromium_follows_the_rotation_slider(tmp_path):
    from stm_lab.lab_browser import Browser, displayed_top5
    from stm_lab.widgets import Lab
    lab = Lab()  # what the app's kernel computes: the five committed cpu models at 64 px
    assert len(lab.entries) == 5
    at0, at30 = _expected(lab, 0), _expected(lab, 30)
    assert at0 != at30  # the known answer moves: otherwise the check below would prove nothing

    with voila(tmp_path) as url:
        browser = Browser()  # every request off 127.0.0.1 is aborted and recorded
        try:
            page = browser.page()
            page.goto(url, timeout=120_000)
            page.wait_for_function("document.querySelectorAll('.stm-lab-card').length === 5", timeout=180_000)
            _assert_same(displayed_top5(page), at0)
            images = page.eval_on_selector_all('img.widget-image', 'els => els.map(e => e.src)')
            assert len(images) == 4  # the view, the FGSM image, its perturbation, the ERF map

            _set_slider(page, 'rotation (deg)', 30)
            first = at0[next(iter(at0))][0]
            page.wait_for_function(
                """([m, p]) => { const li = document.querySelector(`.stm-lab-card[data-model="${m}"] li`);
                                 return li && Number(li.dataset.prob) !== p; }""",
                arg=[next(iter(at0)), first[1]], timeout=60_000)
            _assert_same(displayed_top5(page), at30)
            # the view the models see turned with the slider
            assert page.eval_on_selector_all('img.widget-image', 'els => els.map(e => e.src)')[0] != images[0]
            errors = [m for m in browser.console if m.startswith(('error', 'pageerror'))
                      and 'ERR_FAILED' not in m]  # blocked outside requests (Voila's font CDN) log ERR_FAILED
            assert not errors, errors
            # nothing but Voila's optional icon font was asked of another host, and the app worked without it
            assert all('fontawesome' in u for u in browser.blocked), browser.blocked
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------- launch buttons

LAUNCHERS = ('binderhub_url', 'jupyterhub_url', 'thebe', 'colab_url', 'deepnote_url', 'jupyterlite_url')


def launch_problem(user_yaml: dict):
    """``(launchers, problem)`` for a _config.yml as Jupyter Book 1.x resolves it (its defaults merged, no build):
    the launch buttons sphinx-book-theme would draw, and why they would be broken (None when they would not)."""
    from jupyter_book.config import get_final_config
    conf, _ = get_final_config(user_yaml=user_yaml, cli_config={'latex_individualpages': False}, sourcedir=ROOT,
                               validate=True, raise_on_invalid=True)
    theme = conf['html_theme_options']
    on = [k for k in LAUNCHERS if (theme.get('launch_buttons') or {}).get(k)]
    url = (user_yaml.get('repository') or {}).get('url')
    if on and not url:
        # Jupyter Book falls back to its own repository (or, set empty, the theme fails on the missing repo)
        return on, f'launch buttons {on} without repository.url would open {theme.get("repository_url")!r}'
    return on, None


def test_book_has_no_launch_buttons_while_the_repository_url_is_unset():
    pytest.importorskip('jupyter_book')
    config = yaml.safe_load((ROOT / '_config.yml').read_text())
    on, problem = launch_problem(config)
    assert problem is None, problem
    if not (config.get('repository') or {}).get('url'):
        assert on == []
    # the check catches what it guards against, and passes the setting the README gives
    broken = dict(config, launch_buttons={**config.get('launch_buttons', {}), 'binderhub_url': 'https://mybinder.org'})
    on, problem = launch_problem(broken)
    assert on == ['binderhub_url'] and 'executablebooks/jupyter-book' in problem
    fixed = dict(broken, repository={**config.get('repository', {}), 'url': 'https://github.com/someone/stm-lab'})
    assert launch_problem(fixed) == (['binderhub_url'], None)
