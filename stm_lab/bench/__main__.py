"""``python -m stm_lab.bench <benchmark> ...``: the same as ``stm-lab bench <benchmark> ...``."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main(prog='python -m stm_lab.bench'))
