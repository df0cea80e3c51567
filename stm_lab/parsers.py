"""Every parser of the ``stm-lab`` command tree, built from argparse and the standard library only.

``stm-lab --help``, ``stm-lab <command> --help`` and usage errors come from here, before torch, timm or numpy are
imported: the commands themselves (``handler``, "module:function") import what they need when they run. The modules
that also run on their own (``python -m stm_lab.training``, ``python -m stm_lab.analysis.run``, ...) build their
parser here too, with their own ``prog``, so there is one definition of every option.

Descriptions are the docstrings of the modules that do the work, read from their source (not imported) and turned
into plain text. Every command that takes ``--profile`` defaults to :data:`DEFAULT_PROFILE`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from functools import lru_cache
from typing import Callable, Dict, NamedTuple, Optional

from . import __version__
from .profiles import DEFAULT as DEFAULT_PROFILE, NAMES as PROFILES, NOTEBOOK_PROFILES, PROFILES as _PROFILES
from .profiles import AMP_MODES

ROOT = Path(__file__).resolve().parent.parent  # the checkout (stm_lab.results.ROOT, without importing torch)
NOTEBOOKS_DIR = ROOT / 'notebooks'
GENERATED_DIR = ROOT / 'book' / 'generated'

# One rule for every command that takes --profile: stm_lab.profiles.DEFAULT (cpu), the profile of the committed
# results and of the book that `make book` builds. smoke (tiny untrained models, CI) and paper (GPUs) are always named.
PROFILE_HELP = {name: f'{name}: {p.help}' for name, p in _PROFILES.items()}  # one line each, in every --profile's help
THREADS_HELP = 'torch CPU threads (1 is faster on a busy shared machine)'
DATA_DIR_HELP = ('ImageNet: the folder holding train/ and val/ (default: $STM_LAB_IMAGENET); other datasets: the '
                 'folder of their shards (default: $STM_LAB_DATA, else ../shared/data)')


# ------------------------------------------------------------------------------------------------ help text
# :func:`x`, :mod:`~a.b` (the whole name: help text has no links to follow), :mod:`.sibling`, :ref:`text <target>`
_ROLE = re.compile(r':[a-z]+:`~?\.?([^`<]*?)\s*(?:<[^>]*>)?`')


def plain(text: str) -> str:
    """reStructuredText of a docstring as plain help text: roles and literals lose their markup (``:func:`~a.b.f```
    becomes ``a.b.f``, a double-backquoted literal its content), and a paragraph's closing ``::`` becomes ``:``."""
    text = _ROLE.sub(r'\1', text)
    text = re.sub(r'``(.+?)``', r'\1', text, flags=re.S)
    text = re.sub(r'(?<![\w`])`([^`\n]+)`(?![\w`])', r'\1', text)  # `interpreted text`
    return re.sub(r'(\S)::$', r'\1:', text, flags=re.M)


@lru_cache(maxsize=None)
def module_doc(module: str) -> str:
    """The docstring of ``stm_lab.<module>`` as plain text, read from its source file without importing it (the
    modules that do the work import torch)."""
    import ast
    import tokenize
    path = Path(__file__).parent.joinpath(*module.split('.')).with_suffix('.py')
    with tokenize.open(path) as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.STRING:
                return plain(ast.literal_eval(tok.string).strip())
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENCODING):
                break
    return ''


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their layout (examples, lists); every option's help ends with its default, unless the
    default is nothing (None, empty, a flag's False) or the help already says what it is."""

    def _get_help_string(self, action):
        text = action.help or ''
        default = action.default
        if (action.nargs == 0 or default is None or default is argparse.SUPPRESS or default in ('', [], ())
                or 'default' in text or (not action.option_strings and action.nargs not in ('?', '*'))):
            return text
        shown = ' '.join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f'{text} (default: {shown.replace("%", "%%")})'


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors can be one line (``one_line_errors``: the usage of ``train`` alone is a
    dozen lines; ``--help`` shows the rest)."""
    one_line_errors = False

    def error(self, message):
        if self.one_line_errors:
            self.exit(2, f'{self.prog}: error: {message} (see --help)\n')
        super().error(message)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, '_parser'):  # the deepest (sub)command's parser returns first
            namespace._parser = self
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        """As argparse's, except that arguments left over are reported by the deepest subcommand parsed (with its
        usage), which is the one they were given to unless they came before it."""
        namespace, extras = self.parse_known_args(args, namespace)
        parser = vars(namespace).pop('_parser', self)
        if extras:
            parser.error(f'unrecognized arguments: {" ".join(extras)}')
        return namespace


def _profile(p, choices=PROFILES, default=DEFAULT_PROFILE, what: str = ''):
    if default not in choices:  # a command that exists at one profile only (detect run)
        default = choices[0]
    p.add_argument('--profile', default=default, choices=choices,
                   help=(f'{what}. ' if what else '') + '; '.join(PROFILE_HELP[c] for c in choices))


def _threads(p, default=None, extra: str = ''):
    p.add_argument('--threads', type=int, default=default,
                   help=THREADS_HELP + (extra or ('' if default is not None else '; default: all cores')))


def _no_save(p, what: str):
    p.add_argument('--no-save', dest='save', action='store_false', help=f'print only; by default {what} is written')


def _sub(sub, name: str, help: str, description: Optional[str] = None):
    """A subcommand whose description is its help line unless one is given."""
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + '.',
                          formatter_class=HelpFormatter)


# ------------------------------------------------------------------------------------------------ the commands
def add_models(p):
    p.add_argument('pattern', nargs='?', default='u_*', help='timm model names to list (a glob pattern)')
    p.add_argument('--params', action='store_true', help='also build each model and print its parameter count')


def add_mixers(p):
    pass


def add_complexity(p):
    p.add_argument('--models', nargs='*', help='model names (default: the 20 models of Table III)')
    p.add_argument('--img-size', type=int, default=224, help='input side in pixels')
    _no_save(p, 'results/paper/table3_complexity.json (only for the whole table)')


def add_notebooks(p):
    _profile(p, NOTEBOOK_PROFILES, what='Which results/<profile>/ the pages read (no model is trained at paper here)')
    p.add_argument('--only', nargs='*', metavar='NAME', help='these notebooks only (names without .ipynb)')
    p.add_argument('--src', default=str(NOTEBOOKS_DIR), help='folder of notebook sources')
    p.add_argument('--out', default=str(GENERATED_DIR), help='folder for the executed copies')


def add_train(p):
    p.add_argument('--model', required=True, help='model to train (a registered name; stm-lab models lists them)')
    _profile(p)
    p.add_argument('--resume', default='auto', help="'auto': the run folder's last checkpoint, if any; 'none': start "
                                                     "over; or a checkpoint path")
    p.add_argument('--out', help='run folder (default: runs/<profile>/<model>)')
    p.add_argument('--epochs', type=int, help="training epochs (default: the profile's)")
    p.add_argument('--batch-size', type=int,
                   help="global batch size; the learning rate follows, linear rule (default: the profile's)")
    p.add_argument('--seed', type=int, help='random seed (default: 0)')
    p.add_argument('--amp', choices=AMP_MODES,
                   help="autocast: none, bf16 (CPU or GPU) or fp16 (GPU, with a gradient scaler) (default: the "
                        "profile's)")
    p.add_argument('--eval-every', type=int,
                   help="epochs between evaluations; the last epoch is always evaluated (default: the profile's)")
    p.add_argument('--workers', type=int, help="DataLoader workers (default: the profile's)")
    p.add_argument('--data-dir', help=DATA_DIR_HELP)
    p.add_argument('--no-download', action='store_true', help='never fetch data from the internet')
    p.add_argument('--stop-after', type=int, help='stop after this many epochs in this call (resume later)')
    p.add_argument('--set', action='append', metavar='KEY=VALUE',
                   help='override a config field, e.g. --set data.mixup=0 --set data.auto_augment=none (repeatable)')
    p.add_argument('--results-subdir', default='', metavar='DIR',
                   help='export to results/<profile>/DIR/ instead of results/<profile>/ (e.g. epochs40 for a longer '
                        'budget); on a finished run: export it again')
    p.add_argument('--dry-run', action='store_true', help='print the resolved configuration and torchrun command')
    p.add_argument('--no-progress', action='store_true', help='no progress bar during the epochs')
    p.add_argument('--json', action='store_true', help='print the final metrics as one JSON line')
    _threads(p)


def add_eval(p):
    p.add_argument('--checkpoint', required=True,
                   help='weights to evaluate: results/<profile>/<model>.safetensors or a run\'s last.safetensors')
    p.add_argument('--data', help='dataset (default: the one the checkpoint was trained on)')
    p.add_argument('--split', default='val', help='dataset split')
    p.add_argument('--limit', type=int, help='evaluate a fixed seeded subset of this many images (default: all)')
    p.add_argument('--weights', default='auto', choices=('auto', 'model', 'ema'),
                   help="which weights of a run checkpoint: the trained ones, their moving average, or 'auto': those "
                        "the run exports (its config's export_weights)")
    p.add_argument('--batch-size', type=int, default=256, help='images per batch')
    p.add_argument('--data-dir', help=DATA_DIR_HELP)
    p.add_argument('--json', action='store_true', help='print one JSON line')
    _threads(p)


def add_summary(p):
    _profile(p)
    p.add_argument('--save', action='store_true',
                   help='write results/<profile>/table3_accuracy.json and results/<profile>/README.md')


ANALYSES = ('erf', 'invariance', 'fgsm', 'demo', 'erf_photos')  # stm_lab.analysis.run.ANALYSES


def add_analyze(p):
    p.add_argument('what', choices=(*ANALYSES, 'all', 'outcomes'),
                   help='which analysis (all: every one, in turn; outcomes: the per-image outcomes of the runs of '
                        'one --seed)')
    _profile(p, NOTEBOOK_PROFILES, what='At smoke the numbers mean nothing')
    p.add_argument('--models', nargs='*', help='model names (default: the profile\'s five)')
    p.add_argument('--limit', type=int, help='at most this many images (default: the profile\'s count)')
    _threads(p, 1, '; see stm-lab bench analyses --help')
    _no_save(p, 'results/<profile>/<analysis>.json')
    p.add_argument('--seed', type=int, help='outcomes: the training seed whose runs are analysed')


def add_ablations(p):
    sub = p.add_subparsers(dest='what', required=True, metavar='<action>', help='what to do')
    s = _sub(sub, 'list', 'the planned runs, their commands and which are done')
    _profile(s, ('cpu', 'smoke'))
    s = _sub(sub, 'run', 'train the missing runs (resumable)')
    _profile(s, ('cpu', 'smoke'))
    s.add_argument('--jobs', type=int, default=2, help='runs side by side, one thread each')
    s.add_argument('--only', nargs='*', metavar='MODEL', help='these models only (default: every planned run)')
    s.add_argument('--which', default='all', choices=('all', 'ablations', 'seeds'),
                   help='the ablation runs (Tables II, VI, VII), the seed set (seeds 1-4 of the five models, each '
                        'analysed right after its training), or both')
    _sub(sub, 'complexity', 'parameters and MACs at 224 of every variant -> results/paper/ablation_complexity.json')


def add_detect(p):
    sub = p.add_subparsers(dest='command', required=True, metavar='<action>', help='what to do')
    s = _sub(sub, 'data', 'generate the shapes set of a profile (cached)')
    _profile(s, NOTEBOOK_PROFILES)
    s = _sub(sub, 'train', 'train a detector (resumes from its run folder by default)')
    s.add_argument('--model', required=True, help='backbone model, e.g. u_halonet_micro')
    _profile(s)
    s.add_argument('--resume', default='auto', help="'auto': the run folder's last checkpoint, if any; 'none': start "
                                                     "over; or a checkpoint path")
    s.add_argument('--epochs', type=int, help="training epochs (default: the profile's)")
    s.add_argument('--pretrained', help="backbone initialization: 'auto' (default: the profile's classification "
                                        "checkpoint), 'none' (seeded initialization) or a path")
    s.add_argument('--data-dir', help='COCO folder (paper profile)')
    s.add_argument('--amp', choices=AMP_MODES,
                   help="autocast of the training steps: none, bf16 (faster where the CPU has bf16 units, "
                        "avx512_bf16 / amx_bf16) or fp16 (GPU) (default: the profile's)")
    s.add_argument('--stop-after', type=int, help='stop after this many epochs in this call (resume later)')
    s.add_argument('--out', help='run folder (default: runs/<profile>/detection/<model>)')
    s.add_argument('--dry-run', action='store_true', help='print the resolved configuration and torchrun command')
    s = _sub(sub, 'evaluate', 'AP, noise, scale sweep and demo of the trained detectors -> detection.json')
    _profile(s, NOTEBOOK_PROFILES)
    s.add_argument('--models', nargs='*', help="model names (default: the profile's five)")
    s = _sub(sub, 'bench', 'training / inference images/s per model at a profile')
    _profile(s, NOTEBOOK_PROFILES)
    s.add_argument('--models', nargs='*', help="model names (default: the profile's five)")
    s.add_argument('--steps', type=int, default=4, help='timed training steps per model per round')
    s.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds (the median is used)')
    s.add_argument('--no-companion', dest='companion', action='store_false',
                   help='time alone, without a second training running beside (the plan runs two side by side)')
    s.add_argument('--amp', choices=AMP_MODES, help="autocast of the timed steps (default: the profile's)")
    s.add_argument('--save', action='store_true', help='write results/<profile>/detection_throughput.json')
    s = _sub(sub, 'run', 'the smoke profile end to end (data, five trainings, evaluation)')
    _profile(s, ('smoke',), what='The only one here')
    s = _sub(sub, 'commands', "print the commands that make a profile's detection results")
    _profile(s, NOTEBOOK_PROFILES)
    for s in sub.choices.values():
        _threads(s)


def add_lab(p):
    sub = p.add_subparsers(dest='what', required=True, metavar='<action>', help='what to do')
    _sub(sub, 'runtime', 'copy ONNX Runtime Web into book/_static/lab/ort')
    for name, text in (('build', 'export the models and the lab data'),
                       ('check', 'exported vs PyTorch -> results/<profile>/lab_export.json'),
                       ('measure', 'speed in headless Chromium -> results/<profile>/lab_browser.json')):
        s = _sub(sub, name, text)
        _profile(s, NOTEBOOK_PROFILES)
        _threads(s, 1)
        if name == 'check':
            s.add_argument('--images', type=int, help='validation images (default: the profile\'s 500)')
        if name == 'measure':
            s.add_argument('--html', default=str(ROOT / '_build' / 'html'), help='the built book')
            s.add_argument('--repeats', type=int, default=20, help='timed runs per measurement')
        _no_save(s, 'the result file')


def add_reproduce(p):
    _profile(p, what='At paper it prints the commands')
    p.add_argument('--only', nargs='+', metavar='STEP',
                   help='steps or groups of steps, e.g. train analyze:erf detect (default: every step)')
    p.add_argument('--skip', nargs='+', metavar='STEP', help='steps or groups of steps left out, e.g. notebooks book '
                   '(the results only: what `make book PROFILE=smoke` runs first)')
    p.add_argument('--models', nargs='+', metavar='M', help="per-model steps for these models only (default: the "
                   "profile's five; at paper Table III's twenty)")
    p.add_argument('--dry-run', action='store_true', help='print the plan (what is done already) and run nothing')


# ------------------------------------------------------------------------------------------------ benchmarks
def _bench_run_options(p, result: str):
    """The options shared by train-speed, table8 and train-profile (stm_lab.bench.steps)."""
    _threads(p, 2)
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--amp', choices=('fp32', 'bf16', 'fp16'), default='fp32', help='autocast dtype (fp32: none)')
    p.add_argument('--no-save', action='store_true', help='print only, write no result file')
    p.add_argument('--name', help=f'result name under results/bench/ (default: {result})')


def bench_dcnv3(p):
    _threads(p, 2)
    p.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds')
    p.add_argument('--no-train', dest='train', action='store_false', help='time the core only')
    p.add_argument('--save', action='store_true', help='also write results/bench/dcnv3.json')


def bench_train_speed(p):
    p.add_argument('--models', nargs='+', help="models (default: the five micro models and timm's Swin)")
    p.add_argument('--img-size', type=int, default=64, help='training image size')
    p.add_argument('--infer-sizes', type=int, nargs='*', default=[64, 224], help='inference image sizes')
    p.add_argument('--batch-size', type=int, default=32, help='training batch size')
    p.add_argument('--infer-batch-size', type=int, default=32, help='inference batch size')
    p.add_argument('--rounds', type=int, default=7, help='interleaved training rounds (the median is reported)')
    p.add_argument('--steps', type=int, default=2, help='training steps per model per round')
    p.add_argument('--warmup', type=int, default=2, help='untimed training steps per model first')
    p.add_argument('--infer-rounds', type=int, default=5, help='interleaved inference rounds')
    p.add_argument('--bf16', action='store_true',
                   help='time every model in fp32 and under bf16 autocast in the same rounds and print the bf16/fp32 '
                        'ratios (result: train_speed_bf16)')
    _bench_run_options(p, 'train_speed')


def bench_train_profile(p):
    p.add_argument('--models', nargs='+', help="models (default: u_swin_micro and timm's Swin of the same shape)")
    p.add_argument('--img-size', type=int, default=64, help='image size')
    p.add_argument('--batch-size', type=int, default=32, help='batch size')
    p.add_argument('--steps', type=int, default=3, help='profiled steps per model (after one warm-up step)')
    p.add_argument('--top', type=int, default=12, help='operators listed per model')
    _bench_run_options(p, 'train_profile')


def bench_table8(p):
    p.add_argument('--models', nargs='+', help='models (default: the five micro models)')
    p.add_argument('--sizes', type=int, nargs='+', default=[256, 512, 1024], help='input sizes in pixels')
    p.add_argument('--batch-sizes', type=int, nargs='+', help='one per size (default: 128 32 12 on a GPU, as the '
                                                             'paper; 8 2 1 on the CPU)')
    p.add_argument('--steps', type=int, help='timed iterations (default: 100 GPU, 3 CPU)')
    p.add_argument('--warmup', type=int, help='warm-up iterations (default: 10 GPU, 1 CPU)')
    p.add_argument('--rounds', type=int,
                   help='interleaved rounds the timed steps are split into (default: 1 GPU, one per step on the CPU)')
    _bench_run_options(p, 'table8_throughput')


def bench_analyses(p):
    p.add_argument('--only', choices=('erf', 'fgsm'), help='one analysis (default: both)')
    p.add_argument('--models', nargs='*', help='models (default: the five micro models)')
    p.add_argument('--img-size', type=int, default=64, help='image size')
    p.add_argument('--erf-images', type=int, default=100, help='images of the ERF maps')
    p.add_argument('--fgsm-images', type=int, default=3925, help='images of the FGSM sweep (Imagenette val size)')
    _threads(p, 1, '; see the description above')


def bench_cpu_profile(p):
    _profile(p)
    p.add_argument('--models', nargs='*', help='models (default: the five micro models)')
    p.add_argument('--steps', type=int, default=12, help='timed training steps per model per round')
    p.add_argument('--warmup', type=int, default=3, help='training steps per model before the timed ones')
    p.add_argument('--rounds', type=int, default=1, help='interleaved rounds (the median is reported)')
    p.add_argument('--workers', type=int, help="DataLoader workers (default: the profile's)")
    p.add_argument('--save', action='store_true', help='write results/<profile>/train_throughput.json')
    _threads(p)


class Benchmark(NamedTuple):
    module: str  # under stm_lab.bench: its docstring is the description, its run(args) the benchmark
    help: str
    add: Callable


BENCHMARKS: Dict[str, Benchmark] = {
    'dcnv3': Benchmark('dcnv3', 'DCNv3 core and U-InternImage training speed, compiled vs pure PyTorch', bench_dcnv3),
    'train-speed': Benchmark('train_speed', "training/inference images/s of the micro models and timm's Swin",
                             bench_train_speed),
    'train-profile': Benchmark('train_profile', 'where a training step goes: parts (stem, stages, head), top '
                               'operators', bench_train_profile),
    'table8': Benchmark('table8', 'inference throughput with the protocol of Table VIII', bench_table8),
    'analyses': Benchmark('analyses', 'time of the ERF and FGSM analyses on the micro models', bench_analyses),
    'cpu-profile': Benchmark('cpu_profile', "training images/s per model at a profile's settings", bench_cpu_profile),
}


def add_benchmark(p, name: str):
    """One benchmark's options, and where it runs."""
    BENCHMARKS[name].add(p)
    p.set_defaults(benchmark=name, bench_module=f'stm_lab.bench.{BENCHMARKS[name].module}')


def benchmark_parser(name: str, prog: str = 'stm-lab bench') -> Parser:
    """The parser of one benchmark (``python -m stm_lab.bench NAME``)."""
    p = Parser(prog=f'{prog} {name}', description=module_doc(f'bench.{BENCHMARKS[name].module}'),
               formatter_class=HelpFormatter)
    add_benchmark(p, name)
    return p


def add_bench(p):
    sub = p.add_subparsers(dest='benchmark', metavar='<benchmark>', help='which benchmark (none: this list)')
    for name, b in BENCHMARKS.items():
        add_benchmark(sub.add_parser(name, help=b.help, description=module_doc(f'bench.{b.module}'),
                                     formatter_class=HelpFormatter), name)


# ------------------------------------------------------------------------------------------------ the tree
class Command(NamedTuple):
    help: str
    add: Callable  # adds the command's arguments to its parser
    handler: str  # 'module:function' that runs the parsed arguments (imported only then)
    doc: Optional[str] = None  # the module whose docstring describes it (default: the help line)


TRAINING = 'stm_lab.training.cli:run_parsed'
COMMANDS: Dict[str, Command] = {
    'models': Command('list the registered models (timm names)', add_models, 'stm_lab.cli:cmd_models'),
    'mixers': Command('list the registered spatial token mixers', add_mixers, 'stm_lab.cli:cmd_mixers'),
    'complexity': Command("parameters and MACs at 224x224 beside the paper's Table III", add_complexity,
                          'stm_lab.cli:cmd_complexity'),
    'notebooks': Command('execute notebooks/*.ipynb with papermill into book/generated/', add_notebooks,
                         'stm_lab.cli:cmd_notebooks'),
    'train': Command("train a model with the paper's recipe at a profile (resumable)", add_train, TRAINING,
                     'training.cli'),
    'eval': Command('top-1/top-5 of a checkpoint', add_eval, TRAINING, 'training.cli'),
    'summary': Command("top-1 of the trained models beside the paper's Table III", add_summary, TRAINING,
                       'training.cli'),
    'analyze': Command('Sec. 6 analyses: ERF, invariance, FGSM, the rotation demo, per-image outcomes', add_analyze,
                       'stm_lab.analysis.run:run_parsed', 'analysis.run'),
    'ablations': Command('Tables II, VI, VII and the seed set at CPU scale (a resumable queue)', add_ablations,
                         'stm_lab.ablations:run_parsed', 'ablations'),
    'detect': Command('detection: Mask R-CNN on the unified backbones (Table V, Fig. 5)', add_detect,
                      'stm_lab.detection.run:run_parsed', 'detection.train'),
    'lab': Command("the book's in-browser lab: ONNX export, parity check, browser speed", add_lab,
                   'stm_lab.lab:run_parsed', 'lab'),
    'bench': Command('benchmarks: speed of the mixers, models and analyses', add_bench,
                     'stm_lab.bench.cli:run_parsed', 'bench.__init__'),
    'reproduce': Command("run every step a profile lacks, then the book (--dry-run: the plan)", add_reproduce,
                         'stm_lab.reproduce:run_parsed', 'reproduce'),
}
TRAINING_COMMANDS = ('train', 'eval', 'summary')


def _description(name: str) -> str:
    c = COMMANDS[name]
    return module_doc(c.doc) if c.doc else c.help[:1].upper() + c.help[1:] + '.'


def command_parser(name: str, prog: Optional[str] = None) -> Parser:
    """The parser of one command on its own (``python -m stm_lab.analysis.run`` is ``stm-lab analyze``)."""
    p = Parser(prog=prog or f'stm-lab {name}', description=_description(name), formatter_class=HelpFormatter)
    COMMANDS[name].add(p)
    return p


def training_parser(prog: str = 'python -m stm_lab.training') -> Parser:
    """train, eval and summary as subcommands of one parser (``python -m stm_lab.training``); usage errors are one
    line."""
    p = Parser(prog=prog, description=module_doc('training.cli'), formatter_class=HelpFormatter)
    p.one_line_errors = True
    sub = p.add_subparsers(dest='command', required=True, metavar='<command>', help='what to do')
    for name in TRAINING_COMMANDS:
        s = sub.add_parser(name, help=COMMANDS[name].help, description=_description(name),
                           formatter_class=HelpFormatter)
        s.one_line_errors = True
        COMMANDS[name].add(s)
    return p


def build_parser(prog: str = 'stm-lab') -> Parser:
    """The whole command tree. Each command's parser sets ``handler``: the function that runs it."""
    p = Parser(prog=prog, formatter_class=HelpFormatter,
               description='stm-lab: a reproducible companion to "Demystify Transformers & Convolutions in Modern '
                           'Image Deep Networks".\nEvery command that takes --profile defaults to '
                           f'{DEFAULT_PROFILE}, the profile of the committed results and of the book.',
               epilog=f'"{prog} <command> --help" shows the options of a command.')
    p.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    p.add_argument('--import', dest='imports', action='append', metavar='MODULE',
                   help='import this module first (repeatable): it registers your own mixers and model families, '
                        'also for the notebook kernels and training runs the command starts')
    sub = p.add_subparsers(dest='command', required=True, metavar='<command>', help='one of')
    for name, c in COMMANDS.items():
        s = sub.add_parser(name, help=c.help, description=_description(name), formatter_class=HelpFormatter)
        s.one_line_errors = name in TRAINING_COMMANDS
        c.add(s)
        s.set_defaults(handler=c.handler)
    return p


def walk(parser: argparse.ArgumentParser, path=()):
    """Every parser of a tree with its command path: (path, parser), depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


if __name__ == '__main__':  # python -m stm_lab.parsers: print every command's help (a check of the whole tree)
    for path, parser in walk(build_parser()):
        print(f'\n{"=" * 100}\n$ stm-lab {" ".join(path)} --help\n')
        parser.print_help(sys.stdout)
