"""python -m trimalloc: the launcher (see trimalloc.cli)."""
import sys

from .cli import main

sys.exit(main())
