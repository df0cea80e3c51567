"""The book's in-browser lab: the profile's five trained models run in the reader's browser (ONNX Runtime Web,
WebAssembly, one thread), offline, on a static page.

    stm-lab lab runtime                  copy ONNX Runtime Web from book/lab/node_modules (npm ci) into _static
    stm-lab lab build --profile cpu      export the models (int8 ONNX), the demo photos and their FGSM directions
    stm-lab lab check --profile cpu      exported vs PyTorch: logits and top-1 -> results/<profile>/lab_export.json
    stm-lab lab measure --profile cpu    speed in headless Chromium (built book) -> results/<profile>/lab_browser.json

What the page gets (``book/_static/lab/``; the code is committed, everything else is built and ignored by git):

- ``lab.js`` (the page: photos, sliders, predictions, FGSM), ``geometry.js`` (the views of
  :func:`stm_lab.analysis.invariance.view`, computed in the browser), ``lab.css``: committed;
- ``ort/``: the three runtime files of the ``onnxruntime-web`` npm package (``package-lock.json`` in
  ``book/lab/``), served from the book itself: no request leaves the reader's machine;
- ``models/<model>.onnx``: :func:`stm_lab.export.export_onnx` with int8 weights; rebuilt when the checkpoint,
  the size or the export code changes (a key in ``models/<model>.json``);
- ``data/photos/``: the demo photos (``data/demo``); ``data/fgsm_<model>.bin``: for each demo photo, the FGSM
  direction sign(grad) of the model at the photo's evaluation view (int8, -1/0/1, photos x 3 x S x S): it does
  not depend on epsilon, so the page only adds epsilon times it and runs the model;
- ``manifest.json``: what the page needs (models, files, classes, photos, slider ranges); the lab page embeds it.

The browser computes each view with exactly the geometry of ``stm_lab.analysis.invariance`` (antialiased
bicubic resize of the short side, bilinear rotation with black corners, integer shift of the crop window):
``tests/test_lab_browser.py`` checks it against :func:`~stm_lab.analysis.invariance.view` pixel for pixel.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from . import profiles, results
from .results import ROOT

NPM_DIR = ROOT / 'book' / 'lab'  # package.json + package-lock.json (npm ci installs node_modules here)
ORT_DIST = NPM_DIR / 'node_modules' / 'onnxruntime-web' / 'dist'
# only what the wasm backend needs (the package's dist/ holds 136 MB of other builds)
RUNTIME_FILES = ('ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm')
SOURCE_LAB_STATIC = ROOT / 'book' / '_static' / 'lab'
# where the lab's built files go: the book's _static (a copy of the book being built elsewhere sets the variable)
LAB_STATIC = Path(os.environ.get('STM_LAB_LAB_DIR', SOURCE_LAB_STATIC))
CODE_FILES = ('lab.js', 'geometry.js', 'lab.css')
FGSM_MAX_255 = 8  # the epsilon slider's range, 0 .. 8/255 (the paper's largest epsilon)
SERVE_HINT = 'python -m http.server -d _build/html'


def _print(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ runtime

def runtime_version() -> Optional[str]:
    pkg = ORT_DIST.parent / 'package.json'
    return json.loads(pkg.read_text())['version'] if pkg.exists() else None


def install_runtime(log=_print) -> bool:
    """Copy ONNX Runtime Web's wasm files from ``book/lab/node_modules`` (``npm ci --prefix book/lab``, which
    ``make book`` runs) into ``book/_static/lab/ort``. False, with a note, when npm has not installed them."""
    missing = [f for f in RUNTIME_FILES if not (ORT_DIST / f).exists()]
    if missing:
        log(f'[lab] ONNX Runtime Web is not installed ({", ".join(missing)} missing under '
            f'{ORT_DIST.relative_to(ROOT)}): run `npm ci --prefix book/lab` (make book does); the lab page will '
            f'say that its runtime is missing')
        return False
    dst = LAB_STATIC / 'ort'
    dst.mkdir(parents=True, exist_ok=True)
    for f in RUNTIME_FILES:
        src = ORT_DIST / f
        if not (dst / f).exists() or (dst / f).stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst / f)
    return True


def runtime_installed() -> bool:
    return all((LAB_STATIC / 'ort' / f).exists() for f in RUNTIME_FILES)


# ------------------------------------------------------------------------------------------------ assets

def _model_key(name: str, model: torch.nn.Module, img_size: int, weights: str) -> str:
    """Changes when the weights, the input size, the export format or the export code change."""
    from .export import EXPORT_VERSION
    h = hashlib.sha256(f'{name}|{img_size}|{weights}|{EXPORT_VERSION}|{torch.__version__}'.encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def demo_eval_views(img_size: int, crop_pct: float) -> torch.Tensor:
    """The demo photos' evaluation views (no rotation, no shift), ``(N, 3, S, S)`` in [0, 1]."""
    from .analysis.invariance import view
    from .analysis.run import demo_images
    x, _ = demo_images()
    return view(x, img_size, crop_pct=crop_pct)


def build(profile: str = 'cpu', models: Optional[Sequence[str]] = None, weights: str = 'int8',
          out: Optional[Path] = None, log=_print) -> dict:
    """Export the profile's models and write the lab's data (module docstring) into ``out`` (default
    :data:`LAB_STATIC`; up-to-date models already built there or in the source tree are copied, not exported again);
    returns the manifest."""
    from .analysis.adversarial import fgsm_direction
    from .analysis.invariance import CROP_PCTS, default_shifts
    from .analysis.run import demo_images, iter_models
    from .data import demo_photos
    from .export import export_onnx, save
    from .pages.common import color_of
    from .models import display_name
    prof = profiles.get(profile, among=profiles.ANALYSIS_PROFILES)
    out = Path(out) if out is not None else LAB_STATIC
    out_models, out_data = out / 'models', out / 'data'
    (out_data / 'photos').mkdir(parents=True, exist_ok=True)
    out_models.mkdir(parents=True, exist_ok=True)
    photos = demo_photos()
    for p in photos:
        shutil.copyfile(p['path'], out_data / 'photos' / p['file'])
    x_demo, _ = demo_images()
    labels = torch.tensor([p['label'] for p in photos])
    entries, classes, geometry = [], None, None
    for m in iter_models(prof, models, log):
        if geometry is None:
            geometry = (m.img_size, m.crop_pct)
            classes = m.classes
        elif geometry != (m.img_size, m.crop_pct) or classes != m.classes:
            raise ValueError(f'{m.name} has a different input size, crop or class list than the other models: '
                             f'one lab page needs one of each')
        key = _model_key(m.name, m.model, m.img_size, weights)
        path, meta_path = out_models / f'{m.name}.onnx', out_models / f'{m.name}.json'
        meta = _meta(path)
        t0 = time.perf_counter()
        cached = next((d / 'models' / f'{m.name}.onnx' for d in (LAB_STATIC, SOURCE_LAB_STATIC)
                       if _meta(d / 'models' / f'{m.name}.onnx').get('key') == key), None)
        if meta.get('key') != key and cached is not None and cached != path:
            shutil.copyfile(cached, path)
            shutil.copyfile(cached.with_suffix('.json'), meta_path)
            meta = _meta(path)
        if meta.get('key') != key:
            save(export_onnx(m.model, m.img_size, m.mean, m.std, weights), path)
            meta = dict(key=key, model=m.name, source=m.source, weights=weights,
                        export_s=round(time.perf_counter() - t0, 1))
            _write(meta_path, json.dumps(meta, indent=1).encode())
            log(f'[lab] {m.name}: exported ({path.stat().st_size / 1e6:.1f} MB, {meta["export_s"]} s)')
        views = demo_eval_views(m.img_size, m.crop_pct)
        direction = fgsm_direction(m.model, views, labels, mean=m.mean, std=m.std)
        fgsm_file = out_data / f'fgsm_{m.name}.bin'
        _write(fgsm_file, direction.to(torch.int8).numpy().tobytes())
        entries.append(dict(name=m.name, display=display_name(m.name), color=color_of(m.name),
                            file=f'models/{m.name}.onnx?v={key}', bytes=path.stat().st_size,
                            fgsm=f'data/fgsm_{m.name}.bin?v={_digest(fgsm_file)}', weights=weights,
                            trained=m.trained, source=m.source))
    if not entries:
        raise ValueError(f'no model of profile {profile!r} is available for the lab')
    # files of other profiles' models (a smoke build before a cpu one) would be published with the book
    keep = {e['name'] for e in entries}
    for f in [*out_models.glob('*.onnx'), *out_models.glob('*.json'), *out_data.glob('fgsm_*.bin')]:
        if f.stem.removeprefix('fgsm_') not in keep:
            f.unlink()
    img_size, crop_pct = geometry
    shifts = default_shifts(img_size)
    manifest = dict(
        profile=profile, trained=all(e['trained'] for e in entries), img_size=img_size, crop_pct=crop_pct,
        max_angle=45, max_shift=max(shifts), crop_pcts=sorted({*CROP_PCTS, crop_pct}), fgsm_max_255=FGSM_MAX_255,
        classes=classes, models=entries, runtime=runtime_version(), runtime_files=list(RUNTIME_FILES),
        photos=[dict(file=f'data/photos/{p["file"]}', label=p['label'], cls=p['class']) for p in photos],
        serve_hint=SERVE_HINT)
    _write(out / 'manifest.json', json.dumps(manifest, indent=1).encode())
    return manifest


def _write(path: Path, data: bytes) -> None:
    """Atomic, and readable by a web server (the published book's files are served as they are)."""
    results.atomic_write_bytes(path, data)
    path.chmod(0o644)


def _meta(onnx_path: Path) -> dict:
    """The sidecar of a built model (its key), or {} when the model or the sidecar is missing."""
    meta = onnx_path.with_suffix('.json')
    return json.loads(meta.read_text()) if onnx_path.exists() and meta.exists() else {}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def model_bytes(manifest: dict) -> int:
    return sum(m['bytes'] for m in manifest['models'])


# ------------------------------------------------------------------------------------------------ page

def page_html(manifest: dict, curves: Optional[str] = None) -> str:
    """The lab's HTML for a notebook output: the container with the manifest, a message for pages opened from
    ``file://`` (browsers do not run module scripts and WebAssembly there), the script, and ``curves`` (HTML of
    :func:`stm_lab.pages.lab.lab_consistency_figure`, whose markers follow the sliders) below the controls.
    :func:`fgsm_html` places the FGSM panel elsewhere on the page."""
    data = html.escape(json.dumps(manifest), quote=True)
    missing = '' if runtime_installed() else (
        '<p class="stm-lab-error">The lab\'s runtime (ONNX Runtime Web) was not installed when this book was '
        'built: install Node.js and npm, then run <code>make book</code> again.</p>')
    return f'''<link rel="stylesheet" href="../../_static/lab/lab.css">
<div id="stm-lab" class="stm-lab" data-manifest="{data}">
{missing}<p class="stm-lab-status" id="stm-lab-status">The lab starts when it comes into view: it runs the
models in your browser, and nothing is sent anywhere.</p>
<noscript><p class="stm-lab-error">The lab needs JavaScript.</p></noscript>
</div>
<div class="stm-lab-figure">{curves or ''}</div>
<script>
if (location.protocol === 'file:') {{
  var s = document.getElementById('stm-lab-status');
  s.className = 'stm-lab-error';
  s.innerHTML = 'This page was opened from a file (<code>file://</code>), where browsers do not run the lab. ' +
    'Serve the built book and open it from there: <code>{SERVE_HINT}</code>, then ' +
    '<code>http://localhost:8000/book/generated/lab.html</code>. The figures on this page were computed ' +
    'beforehand and work anyway.';
}}
</script>
<script type="module" src="../../_static/lab/lab.js"></script>'''


def fgsm_html(curve: Optional[str] = None) -> str:
    """The FGSM panel's container (filled by ``lab.js``) and ``curve`` (:func:`stm_lab.pages.lab.lab_fgsm_figure`)."""
    return (f'<div id="stm-lab-fgsm" class="stm-lab stm-lab-fgsm-box"><p class="stm-lab-note">The FGSM panel '
            f'starts with the lab above.</p></div>\n<div class="stm-lab-figure">{curve or ""}</div>')


def load_results(profile: str) -> Dict[str, Optional[dict]]:
    """``lab_export`` (:func:`check`) and ``lab_browser`` (:func:`stm_lab.lab_browser.measure`) results of a
    profile, None where not measured."""
    out = {}
    for name in ('lab_export', 'lab_browser'):
        try:
            out[name] = results.load_result(profile, name)
        except FileNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------ checks

def check(profile: str = 'cpu', n_images: Optional[int] = None, save: bool = True, log=_print) -> dict:
    """Exported (the lab's int8 files, and a float32 export) vs PyTorch, per model: the largest logit difference on
    the demo photos' views and the top-1 agreement on ``n_images`` validation images (the profile's
    invariance subset; 500 at cpu). Saved as ``results/<profile>/lab_export.json``."""
    from .analysis.run import eval_view, iter_models, load_images
    from .export import OnnxClassifier, export_onnx, parity
    import onnx
    prof = profiles.get(profile, among=profiles.ANALYSIS_PROFILES)
    n = n_images or prof.analyses.invariance_images
    t0 = time.time()
    images, labels, _ = load_images(prof, n)
    records = []
    for m in iter_models(prof, log=log):
        demo = demo_eval_views(m.img_size, m.crop_pct)
        val = eval_view(images, m.img_size, m.crop_pct)
        rec = dict(model=m.name, trained=m.trained, img_size=m.img_size)
        for weights in ('fp32', 'int8'):
            path = LAB_STATIC / 'models' / f'{m.name}.onnx'
            if weights == 'int8' and path.exists():
                clf = OnnxClassifier(path)
                rec['bytes'] = path.stat().st_size
            else:
                proto = export_onnx(m.model, m.img_size, m.mean, m.std, weights)
                clf = OnnxClassifier(proto.SerializeToString())
                if weights == 'int8':
                    rec['bytes'] = len(proto.SerializeToString())
            on_demo = parity(m.model, clf, demo, m.mean, m.std)
            on_val = parity(m.model, clf, val, m.mean, m.std)
            rec[weights] = dict(demo_max_abs_diff=on_demo['max_abs_diff'], val_max_abs_diff=on_val['max_abs_diff'],
                                val_top1_agreement=on_val['top1_agreement'], n_val=on_val['n'],
                                n_demo=on_demo['n'])
        log(f'[lab check] {m.name}: fp32 max |diff| {rec["fp32"]["val_max_abs_diff"]:.2g}, int8 max |diff| '
            f'{rec["int8"]["val_max_abs_diff"]:.3f}, int8 top-1 agreement {rec["int8"]["val_top1_agreement"]:.3f} '
            f'on {n} images, {rec["bytes"] / 1e6:.1f} MB')
        records.append(rec)
    doc = dict(records=records, config=dict(analysis='lab_export', n_images=n, onnx=onnx.__version__))
    if save and records:
        results.save_result(profile, 'lab_export', records, doc['config'],
                            results.provenance(profile, wall_time_s=round(time.time() - t0, 1)))
    return doc


# ------------------------------------------------------------------------------------------------ CLI

def build_parser(prog: str = 'stm-lab lab') -> argparse.ArgumentParser:
    """The options of ``stm-lab lab`` (defined in stm_lab.parsers, with the rest of the command tree)."""
    from .parsers import command_parser
    return command_parser('lab', prog)


def main(argv=None, prog: str = 'stm-lab lab') -> int:
    return run_parsed(build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv)))


def run_parsed(args) -> int:
    """Run parsed arguments (``args.what``: runtime, build, check or measure)."""
    if hasattr(args, 'threads'):
        torch.set_num_threads(args.threads)
    try:
        if args.what == 'runtime':
            return 0 if install_runtime() else 1
        if args.what == 'build':
            install_runtime()
            m = build(args.profile)
            _print(f'[lab] {len(m["models"])} models, {model_bytes(m) / 1e6:.1f} MB in {LAB_STATIC.relative_to(ROOT)}')
        elif args.what == 'check':
            check(args.profile, args.images, args.save)
        elif args.what == 'measure':
            from .lab_browser import measure
            measure(args.profile, Path(args.html), repeats=args.repeats, save=args.save)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f'stm-lab lab: error: {e.args[0] if e.args else e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
