"""One version of the config, built into what jobs use: the client, the profile book, the folders.

A reload builds a new `Runtime` and hands it to the job loop; the old one is never closed, so a
job that started with it finishes with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ocrwatch.client import OcrClient
from ocrwatch.config import Config, Credentials, FolderConfig
from ocrwatch.journal import Job
from ocrwatch.metrics import Metrics
from ocrwatch.profiles import ProfileBook
from ocrwatch.taskpoll import PollSchedule

# A refusal is retried at most once a minute, or after the service's Retry-After.
AUTH_RETRY_S: Final = 60.0
DEFAULT_SETTLE_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a job takes from one version of the config."""

    config: Config
    client: OcrClient
    book: ProfileBook
    folders: Mapping[Path, FolderConfig]  # by absolute root
    staging: Path | None  # where sidecars are prepared, if it is usable
    poll: PollSchedule = field(default_factory=PollSchedule)

    @classmethod
    def build(
        cls,
        config: Config,
        credentials: Credentials | None,
        metrics: Metrics | None = None,
    ) -> Runtime:
        return cls(
            config,
            OcrClient(
                config.api, credentials, auth_retry_s=AUTH_RETRY_S, metrics=metrics
            ),
            ProfileBook(config),
            {f.path.absolute(): f for f in config.folders},
            _staging(config.state_dir),
            PollSchedule.from_env(base_url=config.api.base_url),
        )

    def profile_for(self, job: Job) -> str | None:
        """The job's own profile (from `submit`), else its folder's; None if its folder left the config."""
        if job.profile is not None:
            return job.profile
        folder = self.folders.get(job.root)
        return None if folder is None else folder.profile

    def roots_for(self, job: Job) -> list[Path]:
        """Where a file sent for `job` may really be: its own root and the watched folders,
        with links resolved (a link may point from one watched folder into another)."""
        return [Path(os.path.realpath(r)) for r in (job.root, *self.folders)]

    def settle_s(self, root: Path) -> float:
        folder = self.folders.get(root)
        return DEFAULT_SETTLE_S if folder is None else folder.settle_seconds


def _staging(state_dir: Path) -> Path | None:
    staging = state_dir / "staging"
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # sidecars are then prepared next to the original
    return staging
