"""``python -m handfit.cli``: the command line (as ``python -m handfit``)."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
