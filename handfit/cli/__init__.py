"""Command line: a thin layer over :mod:`handfit.api` that parses options,
draws progress and writes files. Exit codes: 0 at least one hand fitted,
1 anything else, 2 usage error (bad option, bad model file), 3 no hand found,
4 unreadable input, 5 compute backend unavailable (CUDA, nvdiffrast).

One module per command (fit, detect, batch, merge, train, eval), each
importing what they share from :mod:`.common`; the group is :mod:`.group`'s
``main``, and this file is the one place that adds the commands to it.
"""

from . import batch, detect, eval as eval_, fit, merge, train
from .group import main

for _command in (fit.fit, detect.detect, batch.batch, merge.merge, train.train, eval_.eval_command):
    main.add_command(_command)

__all__ = ["main"]
