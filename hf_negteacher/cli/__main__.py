"""`python -m hf_negteacher.cli`: the `negteacher` command."""

from . import main

main()
