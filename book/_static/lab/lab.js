// The book's in-browser lab (see stm_lab/lab.py): the profile's models run here with ONNX Runtime Web
// (WebAssembly, one thread), served from the book's own _static folder. Nothing leaves the reader's machine:
// photos they drop are read by the page itself.
//
// One queue runs the models: a slider move replaces any update still waiting, and only one session.run is in
// flight at a time (ONNX Runtime sessions must not run concurrently).
import * as G from './geometry.js';

const BASE = new URL('./', import.meta.url);
const root = document.getElementById('stm-lab');
const fgsmRoot = document.getElementById('stm-lab-fgsm');
const M = JSON.parse(root.dataset.manifest);
const S = M.img_size;
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

// ------------------------------------------------------------------------------------------ state and queue
const state = {photo: null, photoName: '', label: null, own: false, scaled: new Map(),
               angle: 0, dy: 0, dx: 0, cropPct: M.crop_pct, eps: 0};
const api = {manifest: M, state, lastView: null, lastLogits: {}, fgsmInputs: {}, fgsmLogits: {}, stats: {updates: [], load: {}}};
window.stmLab = api;
let ort = null;
const sessions = new Map();
const fgsmDirections = new Map();
const pending = new Map();
let busy = false;
let idleWaiters = [];

function schedule(kind, job) {
  pending.set(kind, job);
  if (!busy) pump();
}

async function pump() {
  busy = true;
  while (pending.size) {
    const [kind, job] = pending.entries().next().value;
    pending.delete(kind);
    try {
      await job();
    } catch (e) {
      status(`Error: ${e.message || e}`, true);
      console.error(e);
    }
  }
  busy = false;
  const waiters = idleWaiters;
  idleWaiters = [];
  waiters.forEach(r => r());
}

api.idle = () => (busy || pending.size) ? new Promise(r => idleWaiters.push(r)) : Promise.resolve();

function status(text, error = false) {
  const s = document.getElementById('stm-lab-status');
  s.className = error ? 'stm-lab-error' : 'stm-lab-status';
  s.textContent = text;
}

// ------------------------------------------------------------------------------------------ runtime and models
async function loadRuntime() {
  if (ort) return ort;
  try {
    ort = await import(new URL('ort/ort.wasm.min.mjs', BASE).href);
  } catch (e) {
    throw new Error('the lab\'s runtime (ONNX Runtime Web) is missing from this build: run `make book` ' +
                    'with Node.js and npm installed');
  }
  ort.env.wasm.wasmPaths = new URL('ort/', BASE).href;  // never the CDN
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  return ort;
}

function session(m) {
  // each model is fetched and compiled the first time it is needed
  if (!sessions.has(m.name)) {
    const t0 = performance.now();
    sessions.set(m.name, loadRuntime().then(o => o.InferenceSession.create(new URL(m.file, BASE).href,
      {executionProviders: ['wasm'], graphOptimizationLevel: 'all',
       logSeverityLevel: 3,  // errors only: the folded int8 initializers are otherwise reported one by one
       // fold the int8 weights' DequantizeLinear into float32 constants at load, as stm_lab.export.SESSION_CONFIG
       // (otherwise the products run in int8, and slower)
       extra: {session: {disable_quant_qdq: '1'}}})).then(s => {
        api.stats.load[m.name] = performance.now() - t0;
        return s;
      }));
  }
  return sessions.get(m.name);
}

async function logits(m, data) {
  const s = await session(m);
  const t0 = performance.now();
  const out = await s.run({image: new ort.Tensor('float32', data, [1, 3, S, S])});
  return {logits: Float32Array.from(out.logits.data), ms: performance.now() - t0};
}

function softmax(z) {
  const mx = Math.max(...z);
  const e = Array.from(z, v => Math.exp(v - mx));
  const t = e.reduce((a, b) => a + b, 0);
  return e.map(v => v / t);
}

function top(probs, k) {
  return probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, k);
}

// ------------------------------------------------------------------------------------------ photos
function imageFromCanvas(source, w, h) {
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  const ctx = c.getContext('2d', {willReadFrequently: true});
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, w, h);
  return G.fromRGBA(ctx.getImageData(0, 0, w, h).data, h, w);
}

async function loadDemo(i) {
  const p = M.photos[i];
  const im = new Image();
  im.src = new URL(p.file, BASE).href;
  await im.decode();
  setPhoto(imageFromCanvas(im, im.naturalWidth, im.naturalHeight), p.cls, p.label, i);
}

const MAX_SIDE = 640;  // a reader's photo is first reduced (by the browser) to this short side at most

async function loadFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    status(`"${file.name}" is not an image this browser can read (${file.type || 'unknown type'}): ` +
           'choose a JPEG, PNG or WebP photo.', true);
    return false;
  }
  const k = Math.min(1, MAX_SIDE / Math.min(bitmap.width, bitmap.height));
  const w = Math.max(1, Math.round(bitmap.width * k)), h = Math.max(1, Math.round(bitmap.height * k));
  setPhoto(imageFromCanvas(bitmap, w, h), `your photo (${file.name})`, null, null);
  return true;
}

function setPhoto(img, name, label, index) {
  // index: which demo photo, or null for the reader's own
  Object.assign(state, {photo: img, photoName: name, label, own: index === null, photoIndex: index});
  state.scaled.clear();
  api.decoded = img;
  document.querySelectorAll('.stm-lab-thumb').forEach((b, i) => b.classList.toggle('active', i === index));
  update();
  updateFgsm();
}

// ------------------------------------------------------------------------------------------ views
function currentView() {
  let sc = state.scaled.get(state.cropPct);
  if (!sc) {
    sc = G.scaled(state.photo, S, state.cropPct);
    state.scaled.set(state.cropPct, sc);
  }
  return G.viewOfScaled(sc, S, {angle: state.angle, dy: state.dy, dx: state.dx});
}

api.view = (img, settings) => Array.from(G.view(img, S, settings).data);

function draw(canvas, img) {
  const ctx = canvas.getContext('2d');
  ctx.putImageData(new ImageData(G.toRGBA(img), img.w, img.h), 0, 0);
}

// ------------------------------------------------------------------------------------------ the geometry panel
const cards = new Map();

function predictionCard(m) {
  const list = el('ol', {class: 'stm-lab-top5'});
  const card = el('div', {class: 'stm-lab-card', 'data-model': m.name},
    el('div', {class: 'stm-lab-model', style: `border-left: 6px solid ${m.color}`}, m.display), list);
  cards.set(m.name, list);
  return card;
}

function showTop5(m, probs, list) {
  list.replaceChildren(...top(probs, 5).map(([p, i]) => el('li', {
    class: i === state.label ? 'true-class' : '', 'data-class': M.classes[i], 'data-prob': p.toFixed(4)},
    el('span', {class: 'stm-lab-cls'}, M.classes[i] + (i === state.label ? ' \u2713' : '')),
    el('span', {class: 'stm-lab-bar', style: `width: ${(100 * p).toFixed(1)}%; background: ${m.color}`}),
    el('span', {class: 'stm-lab-p'}, `${(100 * p).toFixed(1)}%`))));
}

// t0: when the change happened (the input event's time), for the slider-to-predictions latency
function update(t0 = performance.now()) {
  if (!state.photo) return;
  schedule('geometry', async () => {
    const v = currentView();
    api.lastView = v.data;
    draw(document.getElementById('stm-lab-view'), v);
    const ms = {};
    for (const m of M.models) {
      const r = await logits(m, v.data);
      ms[m.name] = r.ms;
      api.lastLogits[m.name] = r.logits;
      showTop5(m, softmax(r.logits), cards.get(m.name));
    }
    const total = performance.now() - t0;
    api.stats.updates.push({total, models: ms});
    const inf = Object.values(ms).reduce((a, b) => a + b, 0);
    status(`${state.photoName}: five models updated in ${total.toFixed(0)} ms (inference ${inf.toFixed(0)} ms).`);
    marker();  // after the predictions: redrawing the curves' marker is the slowest part of a move that is not them
  });
}

function slider(label, min, max, step, value, fmt, onInput, id) {
  const out = el('output', {});
  const input = el('input', {type: 'range', min, max, step, value, id});
  const sync = () => { out.textContent = fmt(Number(input.value)); };
  input.addEventListener('input', e => { sync(); onInput(Number(input.value), e.timeStamp); });
  sync();
  return [el('label', {class: 'stm-lab-slider', for: id}, el('span', {}, label), input, out), input, sync];
}

function marker() {
  // the current setting on the page's consistency curves (shapes 0, 1, 2: shift, rotation, scale)
  const div = document.getElementById('stm-lab-curves');
  if (!div || !window.Plotly || !div.layout) return;
  const values = [Math.max(Math.abs(state.dy), Math.abs(state.dx)), state.angle, state.cropPct];
  const upd = {};
  values.forEach((v, i) => { upd[`shapes[${i}].x0`] = v; upd[`shapes[${i}].x1`] = v; });
  window.Plotly.relayout(div, upd);
}

function buildGeometryPanel() {
  const thumbs = el('div', {class: 'stm-lab-photos'});
  M.photos.forEach((p, i) => thumbs.append(el('button', {class: 'stm-lab-thumb', type: 'button', title: p.cls,
    onclick: () => loadDemo(i)}, el('img', {src: new URL(p.file, BASE).href, alt: p.cls}))));
  const file = el('input', {type: 'file', accept: 'image/*', id: 'stm-lab-file'});
  file.addEventListener('change', () => file.files[0] && loadFile(file.files[0]));
  thumbs.append(el('label', {class: 'stm-lab-own', for: 'stm-lab-file'}, 'Your photo: ', file,
    el('span', {}, ' or drop one on the lab (it stays in your browser)')));

  const canvas = el('canvas', {id: 'stm-lab-view', width: S, height: S, class: 'stm-lab-canvas'});
  const shiftFmt = (axis) => v => v === 0 ? '0 px' : `${Math.abs(v)} px ${v > 0 ? axis[0] : axis[1]}`;
  const [rot, rotIn, rotSync] = slider('rotation', 0, M.max_angle, 0.5, 0, v => `${v}\u00b0`,
    (v, ts) => { state.angle = v; update(ts); }, 'stm-lab-angle');
  const [sx, sxIn, sxSync] = slider('shift x', -M.max_shift, M.max_shift, 1, 0, shiftFmt(['right', 'left']),
    (v, ts) => { state.dx = v; update(ts); }, 'stm-lab-dx');
  const [sy, syIn, sySync] = slider('shift y', -M.max_shift, M.max_shift, 1, 0, shiftFmt(['down', 'up']),
    (v, ts) => { state.dy = v; update(ts); }, 'stm-lab-dy');
  const ref = M.crop_pcts.indexOf(M.crop_pct);
  const [sc, scIn, scSync] = slider('crop ratio', 0, M.crop_pcts.length - 1, 1, ref,
    i => `${M.crop_pcts[i].toFixed(3)}${M.crop_pcts[i] === M.crop_pct ? ' (reference)' : M.crop_pcts[i] < M.crop_pct ? ' (zoom in)' : ' (zoom out)'}`,
    (i, ts) => { state.cropPct = M.crop_pcts[i]; update(ts); }, 'stm-lab-scale');
  const reset = el('button', {type: 'button', class: 'stm-lab-reset', onclick: () => {
    rotIn.value = 0; sxIn.value = 0; syIn.value = 0; scIn.value = ref;
    [rotSync, sxSync, sySync, scSync].forEach(f => f());
    Object.assign(state, {angle: 0, dx: 0, dy: 0, cropPct: M.crop_pct});
    update();
  }}, 'reset');
  const preds = el('div', {class: 'stm-lab-preds'}, ...M.models.map(predictionCard));
  root.append(thumbs, el('div', {class: 'stm-lab-main'},
    el('figure', {class: 'stm-lab-viewbox'}, canvas, el('figcaption', {}, `what the models see (${S}\u00d7${S})`)),
    el('div', {class: 'stm-lab-controls'}, rot, sx, sy, sc, reset)), preds);

  // drop a photo anywhere on the lab
  for (const target of [root, fgsmRoot]) {
    target.addEventListener('dragover', e => { e.preventDefault(); root.classList.add('dragging'); });
    target.addEventListener('dragleave', () => root.classList.remove('dragging'));
    target.addEventListener('drop', e => {
      e.preventDefault();
      root.classList.remove('dragging');
      const f = e.dataTransfer.files[0];
      if (f) loadFile(f);
    });
  }
}

// ------------------------------------------------------------------------------------------ FGSM
const fgsmRows = new Map();

async function direction(m) {
  if (!fgsmDirections.has(m.name)) {
    fgsmDirections.set(m.name, fetch(new URL(m.fgsm, BASE).href).then(r => {
      if (!r.ok) throw new Error(`${m.fgsm}: HTTP ${r.status}`);
      return r.arrayBuffer();
    }).then(b => new Int8Array(b)));
  }
  return fgsmDirections.get(m.name);
}

function fgsmMarker() {
  const div = document.getElementById('stm-lab-fgsm-curve');
  if (div && window.Plotly && div.layout) {
    window.Plotly.relayout(div, {'shapes[0].x0': state.eps, 'shapes[0].x1': state.eps});
  }
}

function updateFgsm() {
  if (!state.photo) return;
  const note = document.getElementById('stm-lab-fgsm-note');
  if (state.own) {
    note.textContent = 'FGSM on your own photo needs the model\'s gradient, which this static page does not ' +
      'compute: use the kernel widget (stm_lab.widgets) in Jupyter. The directions below belong to the demo photos.';
    fgsmRows.forEach(r => r.pred.replaceChildren());
    return;
  }
  note.textContent = '';
  schedule('fgsm', async () => {
    fgsmMarker();
    const base = G.view(state.photo, S, {cropPct: M.crop_pct});  // the evaluation view the directions belong to
    const n = 3 * S * S, i = state.photoIndex, eps = state.eps / 255;
    for (const m of M.models) {
      const d = (await direction(m)).subarray(i * n, (i + 1) * n);
      const x = new Float32Array(n), pert = new Float32Array(n);
      for (let k = 0; k < n; k++) {
        x[k] = Math.min(Math.max(base.data[k] + eps * d[k], 0), 1);
        pert[k] = Math.min(Math.max(0.5 + 16 * (x[k] - base.data[k]), 0), 1);
      }
      api.fgsmInputs[m.name] = x;
      const row = fgsmRows.get(m.name);
      draw(row.adv, {c: 3, h: S, w: S, data: x});
      draw(row.pert, {c: 3, h: S, w: S, data: pert});
      const r = await logits(m, x);
      api.fgsmLogits[m.name] = r.logits;
      const p = softmax(r.logits);
      const [[p1, c1]] = top(p, 1);
      row.pred.replaceChildren(
        el('div', {class: c1 === state.label ? 'true-class' : 'wrong-class', 'data-class': M.classes[c1],
          'data-prob': p1.toFixed(4)}, `${M.classes[c1]} ${(100 * p1).toFixed(1)}%${c1 === state.label ? ' \u2713' : ''}`),
        el('div', {class: 'stm-lab-ptrue'}, `p(${M.classes[state.label]}) = ${(100 * p[state.label]).toFixed(1)}%`));
    }
  });
}

function buildFgsmPanel() {
  if (!fgsmRoot) return;
  const [eps] = slider('epsilon (/255)', 0, M.fgsm_max_255, 0.25, 0, v => `${v}/255`,
    v => { state.eps = v; updateFgsm(); }, 'stm-lab-eps');
  const grid = el('div', {class: 'stm-lab-fgsm-grid'},
    el('div', {class: 'stm-lab-fgsm-head'}, 'model'), el('div', {class: 'stm-lab-fgsm-head'}, 'FGSM image'),
    el('div', {class: 'stm-lab-fgsm-head'}, 'perturbation \u00d716'), el('div', {class: 'stm-lab-fgsm-head'}, 'prediction'));
  for (const m of M.models) {
    const row = {adv: el('canvas', {width: S, height: S, class: 'stm-lab-canvas small'}),
                 pert: el('canvas', {width: S, height: S, class: 'stm-lab-canvas small'}),
                 pred: el('div', {class: 'stm-lab-fgsm-pred', 'data-model': m.name})};
    fgsmRows.set(m.name, row);
    grid.append(el('div', {class: 'stm-lab-model', style: `border-left: 6px solid ${m.color}`}, m.display),
                row.adv, row.pert, row.pred);
  }
  fgsmRoot.replaceChildren(el('div', {class: 'stm-lab-controls'}, eps),
    el('p', {id: 'stm-lab-fgsm-note', class: 'stm-lab-note'}), grid);
}

// ------------------------------------------------------------------------------------------ start
let started = null;

async function start() {
  status('Loading the runtime and the models\u2026');
  buildGeometryPanel();
  buildFgsmPanel();
  await loadRuntime();
  M.models.forEach(session);  // fetch and compile the five models while the photo loads
  await loadDemo(0);
  await api.idle();
  api.stats.firstPrediction = performance.now();  // since the page was opened
}

api.start = () => (started = started || start().catch(e => { status(`Error: ${e.message || e}`, true); throw e; }));
api.loadDemo = (i) => loadDemo(i).then(api.idle);
api.loadFile = (f) => loadFile(f).then(api.idle);

// time one inference of each model on the current view (after a warm-up), in ms: the median of `repeats`
api.benchmark = async (repeats = 20) => {
  await api.idle();
  const out = {};
  for (const m of M.models) {
    const times = [];
    await logits(m, api.lastView);
    for (let k = 0; k < repeats; k++) times.push((await logits(m, api.lastView)).ms);
    times.sort((a, b) => a - b);
    out[m.name] = times[Math.floor(times.length / 2)];
  }
  return out;
};

if ('IntersectionObserver' in window) {
  const io = new IntersectionObserver(entries => {
    if (entries.some(e => e.isIntersecting)) { io.disconnect(); api.start(); }
  });
  io.observe(root);
} else {
  api.start();
}
