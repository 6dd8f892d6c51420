"""A Ray Tune callback wrapper that keeps a tracker's failure out of the study: the wrapped callback is built and
called inside ``try``; its first error is logged once and it is dropped for the rest of the study."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

logger = logging.getLogger(__name__)


class SafeCallback(Callback):
    """Delegates Tune's hooks to the callback ``build()`` returns (built at ``setup``), containing any failure."""

    def __init__(self, name: str, build: Callable[[], Callback]) -> None:
        self.name = name
        self._build = build
        self.inner: Callback | None = None
        self.error: str | None = None

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        if self.inner is None or self.error is not None:
            return
        try:
            getattr(self.inner, hook)(*args, **kwargs)
        except Exception as exc:  # a tracker must never stop the study
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        logger.warning("tracking: %s failed (%s); the study goes on without it", self.name, self.error)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.inner = self._build()
            self.inner.setup(*args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    def on_trial_start(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_trial_start", *args, **kwargs)

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_trial_result", *args, **kwargs)

    def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_trial_complete", *args, **kwargs)

    def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_trial_error", *args, **kwargs)

    def on_trial_save(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_trial_save", *args, **kwargs)

    def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_checkpoint", *args, **kwargs)

    def on_experiment_end(self, *args: Any, **kwargs: Any) -> None:
        self._call("on_experiment_end", *args, **kwargs)
