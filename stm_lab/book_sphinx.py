"""A small Sphinx extension for the book (listed in ``_config.yml``): pages work offline and load only what they use.

- plotly.js (4.8 MB) and the figure-fitting script are dropped from pages that draw no plotly figure;
- script tags that another extension added twice are kept once (sphinx-thebe registers its configuration script on
  every ``env-before-read-docs``, and the second ``const THEBE_JS_URL`` throws on every page);
- scripts from other hosts (Thebe's loader, which this book does not use) are dropped: no request leaves the
  reader's machine.
"""
from __future__ import annotations

FIGURE_ONLY = ('plotly.min.js', 'fit-figures.js')


def _name(script) -> str:
    """The script's file (or URL); '' for an inline script (Sphinx's ``_JavaScript`` with a body and no file)."""
    name = getattr(script, 'filename', script)
    return str(name) if name else ''


def _key(script):
    return _name(script), tuple(sorted((k, str(v)) for k, v in getattr(script, 'attributes', {}).items()))


def prune_scripts(scripts: list, has_figures: bool) -> list:
    """The scripts a page keeps (see the module docstring)."""
    kept, seen = [], set()
    for script in scripts:
        name = _name(script)
        if name.startswith(('http://', 'https://', '//')):
            continue
        if not has_figures and name.rsplit('/', 1)[-1].split('?')[0] in FIGURE_ONLY:
            continue
        key = _key(script)
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    return kept


def _page_context(app, pagename, templatename, context, doctree):
    if 'script_files' in context:
        context['script_files'] = prune_scripts(context['script_files'], 'plotly-graph-div' in context.get('body', ''))


def setup(app):
    app.connect('html-page-context', _page_context, priority=900)
    return dict(parallel_read_safe=True, parallel_write_safe=True)
