"""The book's pages, one module each (``notebooks/<page>.ipynb`` reads ``stm_lab.pages.<page>``): the facts a
page states, its tables (markdown) and its figures (plotly), computed from ``results/`` through
:mod:`stm_lab.layout`. Pages only read: they run, train, export and bench nothing (``tests/test_layers.py``).
Shared helpers (the renderer, colours, numbered tables) are :mod:`.common`; the seed set several pages decide
claims over is :mod:`.evidence`; :mod:`.findings` gathers every page's claims."""
