"""Ctrl-C or SIGTERM during training: the first one sets a flag that the epoch loop checks after each step and
after each saved epoch (so the epoch stops cleanly and the last finished epoch's files stay resumable); a second
one gives up at once. The mechanism is the one for every command, :mod:`cnncli.core.signals`."""

from __future__ import annotations

from cnncli.core.signals import DeferredStop as StopFlag

__all__ = ["StopFlag"]
