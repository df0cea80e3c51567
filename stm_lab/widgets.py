"""The lab with a kernel: ipywidgets controls running real PyTorch inference (JupyterLab, Voila, Binder, Colab).

::

    from stm_lab.widgets import Lab
    Lab()                                            # as a cell's last line: the cpu profile's five trained models
    Lab().show()                                     # the same, as an ipywidgets VBox (to embed in your own layout)
    Lab(['results/cpu/u_swin_micro.safetensors', 'u_mymixer_micro'])   # checkpoints and registered models
    Lab({'mine': my_model})                          # any classifier of (B, 3, S, S) images, e.g. one with your mixer

The same controls as the book's in-browser lab (``stm_lab.lab``), with the same geometry
(:func:`stm_lab.analysis.invariance.view`): a demo photo or an uploaded one, rotation, shift, crop ratio; each
model's top-5. With a kernel there is more: FGSM at any epsilon on *any* photo, the reader's own included (the
gradient is computed here, :func:`stm_lab.analysis.adversarial.fgsm_direction`, on the current view), and the ERF
map of one stage for the chosen model (:func:`stm_lab.analysis.erf.erf_maps` on the current view).

As an app: ``notebooks/app/lab_app.ipynb`` shows ``Lab()``; ``make app`` serves it with Voila (outputs only, no code)
and ``make lab`` opens JupyterLab on the notebooks (both need the ``lab`` extra: ``jupyterlab``, ``voila``).

A model given by name is created untrained (seeded) unless a checkpoint of that name exists under
``results/cpu``; its classes are then the checkpoint's. Models given as modules use ``classes`` (default: the
Imagenette classes of the committed checkpoints) and the default ImageNet normalization unless they carry a timm
``pretrained_cfg``.
"""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .analysis.common import PixelSpace, mean_std
from .analysis.invariance import CROP_PCTS, default_shifts, view

ModelSpec = Union[str, Path, nn.Module]


@dataclass
class Entry:
    name: str
    model: nn.Module
    mean: tuple
    std: tuple
    classes: List[str]
    img_size: int
    crop_pct: float


def _demo_classes() -> List[str]:
    from .data import demo_photos
    return [p['class'] for p in sorted(demo_photos(), key=lambda p: p['label'])]


def load_entry(name: str, spec: ModelSpec, img_size: int = 64, classes: Optional[Sequence[str]] = None) -> Entry:
    """A model for the lab from a checkpoint path, a registered model name or a module (module docstring)."""
    from .analysis.run import checkpoint_path
    from .training.checkpoint import load_model
    if isinstance(spec, nn.Module):
        mean, std = mean_std(spec)
        return Entry(name, spec.eval(), mean, std, list(classes or _demo_classes()), img_size, 0.875)
    spec = str(spec)
    path = Path(spec)
    if not (spec.endswith('.safetensors') or path.exists()) and checkpoint_path('cpu', spec).exists():
        path = checkpoint_path('cpu', spec)  # a name with a committed checkpoint: the trained model
    if spec.endswith('.safetensors') or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f'no checkpoint at {path}')
        model, state = load_model(path)
        d = state['data']
        return Entry(name, model, tuple(d['mean']), tuple(d['std']), list(state['classes']), d['img_size'],
                     d['crop_pct'])
    import timm
    import stm_lab  # noqa: F401  (registers the models)
    if not timm.is_model(spec):
        raise ValueError(f'{spec!r} is neither a checkpoint file nor a registered model (see `stm-lab models`)')
    cls = list(classes or _demo_classes())
    torch.manual_seed(0)
    model = timm.create_model(spec, num_classes=len(cls), img_size=img_size)
    mean, std = mean_std(model)
    return Entry(name, model.eval(), mean, std, cls, img_size, 0.875)


def _png(x: torch.Tensor, scale: int = 4) -> bytes:
    """(3, S, S) in [0, 1] -> PNG bytes, enlarged ``scale`` times (nearest)."""
    from PIL import Image
    arr = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    return buf.getvalue()


def _heat_png(m: np.ndarray, scale: int = 4) -> bytes:
    from matplotlib import colormaps
    rgb = torch.from_numpy(colormaps['viridis'](np.clip(m, 0, 1))[..., :3]).permute(2, 0, 1).float()
    return _png(rgb, scale)


def decode_photo(content: bytes, name: str = 'upload') -> torch.Tensor:
    """Uploaded bytes -> float (1, 3, H, W) in [0, 1]; a clear ValueError when they are not an image."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(content)) as im:
            arr = np.asarray(im.convert('RGB'))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'"{name}" is not an image that Pillow can read ({type(e).__name__}): upload a JPEG, PNG '
                         f'or WebP photo') from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255


class Lab:
    """The widget app (module docstring). ``models``: a list of checkpoint paths / model names, or a mapping
    name -> path, name or module; default: the cpu profile's five models. ``show()`` returns the widget;
    ``state()`` what the outputs show (for tests and scripts)."""

    def __init__(self, models: Union[None, Sequence[ModelSpec], Mapping[str, ModelSpec]] = None, img_size: int = 64,
                 classes: Optional[Sequence[str]] = None):
        import ipywidgets as W
        from .analysis.run import demo_images
        from .profiles import PROFILES
        if models is None:
            models = list(PROFILES['cpu'].models)
        if not isinstance(models, Mapping):
            models = {Path(str(m)).stem if not isinstance(m, nn.Module) else f'model {i}': m
                      for i, m in enumerate(models)}
        if not models:
            raise ValueError('Lab needs at least one model')
        self.entries = [load_entry(n, s, img_size, classes) for n, s in models.items()]
        sizes = {(e.img_size, e.crop_pct) for e in self.entries}
        if len(sizes) != 1:
            raise ValueError(f'the models take different inputs {sorted(sizes)}: one lab shows one view')
        self.img_size, self.crop_pct = sizes.pop()
        self.demo, self.photos = demo_images()
        self.photo = self.demo[:1]
        self.label: Optional[int] = self.photos[0]['label']
        S = self.img_size
        shift = max(default_shifts(S))
        ratios = sorted({*CROP_PCTS, self.crop_pct})
        style = dict(description_width='7rem')
        layout = W.Layout(width='26rem')
        self.w_photo = W.Dropdown(options=[(p['class'], i) for i, p in enumerate(self.photos)], value=0,
                                  description='demo photo', style=style)
        self.w_upload = W.FileUpload(accept='image/*', multiple=False, description='your photo')
        self.w_angle = W.FloatSlider(0, min=0, max=45, step=0.5, description='rotation (deg)', style=style,
                                     layout=layout, continuous_update=False)
        self.w_dx = W.IntSlider(0, min=-shift, max=shift, description='shift x (px)', style=style, layout=layout,
                                continuous_update=False)
        self.w_dy = W.IntSlider(0, min=-shift, max=shift, description='shift y (px)', style=style, layout=layout,
                                continuous_update=False)
        self.w_scale = W.SelectionSlider(options=ratios, value=self.crop_pct, description='crop ratio', style=style,
                                         layout=layout, continuous_update=False)
        self.w_eps = W.FloatSlider(0, min=0, max=8, step=0.25, description='FGSM eps (/255)', style=style,
                                   layout=layout, continuous_update=False)
        self.w_model = W.Dropdown(options=[e.name for e in self.entries], description='FGSM/ERF model', style=style)
        self.w_stage = W.Dropdown(options=[1, 2, 3, 4], value=3, description='ERF stage', style=style)
        self.w_status = W.HTML()
        self.w_view, self.w_adv, self.w_pert, self.w_erf = (W.Image(format='png') for _ in range(4))
        self.w_top5 = W.HTML()
        self.w_fgsm = W.HTML()
        for w in (self.w_angle, self.w_dx, self.w_dy, self.w_scale, self.w_eps, self.w_model, self.w_stage):
            w.observe(self._changed, names='value')
        self.w_photo.observe(self._demo_chosen, names='value')
        self.w_upload.observe(self._uploaded, names='value')
        self.outputs: Dict[str, object] = {}
        self._widget = None
        self.update()

    # ------------------------------------------------------------------ events
    def _changed(self, _change=None):
        self.update()

    def _demo_chosen(self, change):
        i = change['new']
        self.photo, self.label = self.demo[i:i + 1], self.photos[i]['label']
        self.update(status=f'demo photo: {html.escape(self.photos[i]["class"])}')

    def _uploaded(self, change):
        files = change['new']
        if not files:
            return
        f = files[0]
        name = f.get('name', 'upload')
        try:
            self.photo = decode_photo(bytes(f['content']), name)
        except ValueError as e:
            self.w_status.value = f'<span style="color:#a00">{html.escape(str(e), quote=False)}</span>'
            return
        self.label = None
        self.update(status=f'your photo: {html.escape(name)} ({self.photo.shape[-1]}x{self.photo.shape[-2]})')

    # ------------------------------------------------------------------ compute
    def current_view(self) -> torch.Tensor:
        return view(self.photo, self.img_size, crop_pct=self.w_scale.value, angle=self.w_angle.value,
                    shift=(self.w_dy.value, self.w_dx.value))

    @torch.no_grad()
    def _probs(self, e: Entry, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(PixelSpace(e.model, e.mean, e.std)(x).float(), -1)[0]

    def update(self, status: Optional[str] = None) -> None:
        from .analysis.adversarial import fgsm_direction
        from .analysis.erf import erf_maps
        x = self.current_view()
        self.w_view.value = _png(x[0])
        rows, top5 = [], {}
        for e in self.entries:
            p = self._probs(e, x)
            best = torch.argsort(p, descending=True)[:5].tolist()
            top5[e.name] = [(e.classes[i], float(p[i])) for i in best]
            # data-* attributes: what a browser test reads back (tests/test_app.py), as in the book's lab
            cells = ''.join(f'<li data-class="{html.escape(e.classes[i])}" data-prob="{float(p[i])!r}">'
                            f'{"<b>" if i == self.label else ""}{html.escape(e.classes[i])}'
                            f'{"</b>" if i == self.label else ""} {100 * float(p[i]):.1f}%</li>' for i in best)
            rows.append(f'<div class="stm-lab-card" data-model="{html.escape(e.name)}" '
                        f'style="display:inline-block;vertical-align:top;margin-right:1.2rem">'
                        f'<b>{html.escape(e.name)}</b><ol style="margin:0">{cells}</ol></div>')
        self.w_top5.value = ''.join(rows)
        e = next(e for e in self.entries if e.name == self.w_model.value)
        # FGSM on the current view against the true class (demo photos) or the model's own top-1 (uploads)
        target = self.label if self.label is not None else int(self._probs(e, x).argmax())
        d = fgsm_direction(e.model, x, torch.tensor([target]), mean=e.mean, std=e.std)
        adv = (x + self.w_eps.value / 255 * d).clamp(0, 1)
        self.w_adv.value = _png(adv[0])
        self.w_pert.value = _png((0.5 + 16 * (adv - x))[0])
        p = self._probs(e, adv)
        k = int(p.argmax())
        self.w_fgsm.value = (f'{html.escape(e.name)} at epsilon {self.w_eps.value:g}/255: '
                             f'<b>{html.escape(e.classes[k])}</b> {100 * float(p[k]):.1f}% '
                             f'(p({html.escape(e.classes[target])}) = {100 * float(p[target]):.1f}%)')
        stage = self.w_stage.value - 1
        erf = erf_maps(e.model, x, [stage], mean=e.mean, std=e.std, batch_size=1, progress=False)[stage]
        score = erf.score().float().numpy()
        self.w_erf.value = _heat_png(score)
        self.outputs = dict(view=x, top5=top5, fgsm_image=adv, fgsm_pred=e.classes[k], fgsm_target=target,
                            erf_score=score)
        if status is not None:
            self.w_status.value = status

    def state(self) -> Dict[str, object]:
        return self.outputs

    def show(self):
        """The lab's widget (one per Lab: every display of it shows the same controls, kept in step)."""
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _repr_mimebundle_(self, include=None, exclude=None):
        # a Lab as a cell's last line (or display(lab)) shows its widget, not <stm_lab.widgets.Lab object>
        return self.show()._repr_mimebundle_(include=include, exclude=exclude)

    def _build(self):
        import ipywidgets as W
        head = W.HTML('<b>The lab</b> (PyTorch in this kernel; the book\'s static lab runs the same views in the '
                      'browser)')
        controls = W.VBox([W.HBox([self.w_photo, self.w_upload]), self.w_angle, self.w_dx, self.w_dy, self.w_scale,
                           self.w_eps, W.HBox([self.w_model, self.w_stage]), self.w_status])

        def box(title, w):
            return W.VBox([W.HTML(f'<small>{title}</small>'), w])

        images = W.HBox([box('what the models see', self.w_view), box('FGSM image', self.w_adv),
                         box('perturbation x16', self.w_pert), box('ERF of the chosen stage', self.w_erf)])
        return W.VBox([head, controls, images, self.w_fgsm, self.w_top5])
