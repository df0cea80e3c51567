"""Every ```python and ```bash block of README.md runs, except those marked long: an HTML comment ``<!-- long -->``
(or ``<!-- long: why -->``) on the line right before the fence, for blocks that train, build the book, run the
whole suite, install, or take minutes.

Each block runs in its own process from the checkout's root, with ``STM_LAB_RESULTS`` and ``STM_LAB_RUNS`` in a
temporary folder (what a block writes lands there) and the venv's ``stm-lab`` first on the PATH. A python block
whose first line is ``# name.py`` is also a module the other blocks can import (``--import name``): it is written
to the temporary folder, which is on ``PYTHONPATH``. A failing block names the README line that failed."""
import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
LANGS = ('python', 'bash')
LONG = re.compile(r'^\s*<!--\s*long\b.*-->\s*$')
FENCE = re.compile(r'^(```+|~~~+)\s*([\w+-]*)')
MODULE = re.compile(r'^#\s*([A-Za-z_]\w*)\.py\s*$')
TIMEOUT_S = 300  # a block that needs longer is a long one (the test names it)


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    long: bool

    @property
    def module(self):
        """The module name of a python block that starts with ``# name.py``, else None."""
        m = MODULE.match(self.code.split('\n', 1)[0]) if self.lang == 'python' else None
        return m and m.group(1)


def code_blocks(text: str):
    """The fenced blocks of a markdown text, in order (any language; nested or unclosed fences are errors)."""
    lines = text.split('\n')
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            if LONG.match(lines[i]) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                raise ValueError(f'README.md:{i + 1}: a long marker must be on the line right before a fence')
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        i += 1
        while i < len(lines) and not lines[i].startswith(fence[0] * len(fence)):
            i += 1
        if i == len(lines):
            raise ValueError(f'README.md:{start + 1}: the block is never closed')
        blocks.append(Block(start + 1, lang, '\n'.join(lines[start + 1:i]) + '\n',
                            start > 0 and bool(LONG.match(lines[start - 1]))))
        i += 1
    return blocks


def readme_blocks():
    return [b for b in code_blocks(README.read_text()) if b.lang in LANGS]


def _padded(block: Block, first: str = '') -> str:
    """The block's code preceded by ``first`` and blank lines, so that line numbers in the file are README's."""
    return first + '\n' * (block.line - first.count('\n'))  + block.code


def _failed_line(block: Block, path: Path, err: str):
    if block.lang == 'bash':
        found = re.findall(r'README\.md:(\d+):', err)
    else:
        found = re.findall(rf'File "{re.escape(str(path))}", line (\d+)', err)
    return int(found[-1]) if found else None


def run_block(block: Block, tmp_path: Path, modules=()):
    """Run one block; returns (exit status, README line that failed or None, output)."""
    for m in modules:
        (tmp_path / f'{m.module}.py').write_text(m.code)
    env = dict(os.environ, STM_LAB_RESULTS=str(tmp_path / 'results'), STM_LAB_RUNS=str(tmp_path / 'runs'),
               MPLBACKEND='Agg', PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')])),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')]))
    env.setdefault('OMP_NUM_THREADS', '1')
    if block.lang == 'python':
        path = tmp_path / f'readme_{block.line}.py'
        path.write_text(_padded(block))
        cmd = [sys.executable, str(path)]
    else:
        path = tmp_path / f'readme_{block.line}.sh'
        path.write_text(_padded(block, 'set -eo pipefail; trap \'echo "README.md:$LINENO: exit status $?" >&2\' ERR\n'))
        cmd = ['bash', str(path)]
    # its own process group: on a timeout everything the block started goes too (make, notebook kernels, ...)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, None, f'still running after {TIMEOUT_S} s: mark it <!-- long --> if it is meant to take minutes'
    finally:
        with contextlib.suppress(ProcessLookupError):  # what a finished block left running in the background
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, _failed_line(block, path, stderr), stdout + stderr


BLOCKS = readme_blocks()


@pytest.mark.parametrize('block', [pytest.param(b, id=f'README.md:{b.line}-{b.lang}',
                                                marks=[pytest.mark.skip(reason='marked <!-- long -->')] if b.long else [])
                                   for b in BLOCKS])
@pytest.mark.e2e
def test_readme_block_runs(block, tmp_path):
    status, line, out = run_block(block, tmp_path, [b for b in BLOCKS if b.module and b is not block])
    where = f'README.md:{line}' if line else f'the {block.lang} block at README.md:{block.line}'
    assert status == 0, f'{where} failed (exit status {status}):\n{out[-3000:]}'


# ---------------------------------------------------------------------------------- the runner itself

SAMPLE = '''# title
```python
x = 1
```
<!-- long: trains -->
```bash
make book
```

```bash
echo one
false
echo never
```
```python
# helper.py
VALUE = 42
```
```text
not run
```
```python
import helper

assert helper.VALUE == 42
y = 1 / 0
```
'''


def test_code_blocks_are_found_with_their_lines_and_marks():
    blocks = code_blocks(SAMPLE)
    assert [(b.line, b.lang, b.long, b.module) for b in blocks] == [
        (2, 'python', False, None), (6, 'bash', True, None), (10, 'bash', False, None),
        (15, 'python', False, 'helper'), (19, 'text', False, None), (22, 'python', False, None)]
    assert blocks[2].code == 'echo one\nfalse\necho never\n'
    with pytest.raises(ValueError, match='README.md:2: a long marker must be on the line right before a fence'):
        code_blocks('text\n<!-- long -->\n\n```bash\nmake\n```\n')
    with pytest.raises(ValueError, match='README.md:1: the block is never closed'):
        code_blocks('```python\nx = 1\n')


def test_a_failing_block_names_its_readme_line(tmp_path):
    blocks = code_blocks(SAMPLE)
    status, line, out = run_block(blocks[2], tmp_path)
    assert status == 1 and line == 12 and 'one' in out and 'never' not in out
    status, line, out = run_block(blocks[5], tmp_path, [blocks[3]])  # imports the helper module, then fails
    assert status == 1 and line == 26 and 'ZeroDivisionError' in out
    assert run_block(blocks[0], tmp_path)[:2] == (0, None)


def test_blocks_write_into_the_temporary_results(tmp_path):
    block = code_blocks('```python\nfrom stm_lab import results\nprint(results.RESULTS_DIR)\n```\n')[0]
    status, _, out = run_block(block, tmp_path)
    assert status == 0 and out.strip() == str(tmp_path / 'results')


def test_every_make_target_the_readme_names_exists():
    """`make X` in a block or in inline code is a target of the Makefile; both test tiers and the smoke book are
    there."""
    text = README.read_text()
    named = set()
    for b in code_blocks(text):
        named.update(line.split()[1] for line in b.code.splitlines() if line.startswith('make ') and len(line.split()) > 1)
    named.update(re.findall(r'`make ([^`\s]+)', text))
    named = {n for n in named if '=' not in n}  # variables (make PYTHON=...): no target
    targets = set(re.findall(r'^([\w-]+):', (ROOT / 'Makefile').read_text(), re.M))
    assert {'book', 'test', 'test-all'} <= named and named <= targets, named - targets
    assert 'make book PROFILE=smoke' in text and "-m 'not e2e'" in text
