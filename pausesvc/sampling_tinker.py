"""Moved to :mod:`pausesvc.sampling.tinker`; this name stays so that existing imports keep working."""

from pausesvc.sampling.tinker import *  # noqa: F403
from pausesvc.sampling.tinker import __all__  # noqa: F401
