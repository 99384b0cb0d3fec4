"""``python -m handfit`` (and ``torchrun -m handfit``) runs the command line."""

from .cli import main

if __name__ == "__main__":
    main()
