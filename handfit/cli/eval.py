"""``handfit eval DATA``: 3D accuracy on labelled photos (the command is built by
:func:`handfit.eval.command.make_command` from the shared fit flags)."""

from __future__ import annotations

from ..eval.command import make_command
from .common import common_options, fail, fit_options

eval_command = make_command(common_options, fit_options, fail)
