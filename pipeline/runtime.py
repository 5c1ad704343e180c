"""What the producer and consumer entry points share: settings or a clear exit, and patient retries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from loguru import logger

from pipeline.errors import RetryableError, SettingsError
from pipeline.logs import setup_logging
from pipeline.settings import Settings, load_settings

BACKOFF_START, BACKOFF_MAX = 0.5, 15.0


def settings_and_logging(program: str) -> Settings | None:
    """Settings parsed once and logging configured, or None after printing the configuration error."""
    try:
        settings = load_settings()
    except SettingsError as e:
        print(f"{program}: configuration error: {e}", file=sys.stderr)
        return None
    setup_logging(program, settings.log_level, settings.log_format)
    return settings


def retry(action: Callable[[], None], stopping: Callable[[], bool]) -> bool:
    """Run `action` until it succeeds, backing off (0.5 s doubling to 15 s) while it raises
    RetryableError. False if a stop was requested first; other errors propagate."""
    backoff = BACKOFF_START
    while not stopping():
        try:
            action()
            return True
        except RetryableError as e:
            logger.warning("{}; retrying in {:.1f}s", e, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
    return False
