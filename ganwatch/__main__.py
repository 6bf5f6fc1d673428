"""``python -m ganwatch``."""

import sys

from ganwatch.cli import main

code = main()
if code == 130:
    # CPython remembers a KeyboardInterrupt that passed through an exec() of source text (as
    # dataclasses and namedtuple build methods) and, under `python -m`, ends the process by
    # SIGINT after exit even though main() handled it. A completed exec() of text forgets it.
    exec("pass")
sys.exit(code)
