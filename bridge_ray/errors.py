"""Errors a user can fix. Each message says what was wrong and how to fix it.

The CLI prints ``str(err)`` on one line and exits with ``err.exit_code`` (2 for
user errors, 1 for a job that failed), never a traceback.
"""
from __future__ import annotations


class BridgeRayError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 2
    prefix = "error: "


class ClusterNotFound(BridgeRayError):
    """No cluster record under that name."""


class ClusterStale(BridgeRayError):
    """A cluster record exists but its head does not answer."""


class ClusterRecordBroken(BridgeRayError):
    """A cluster record exists but cannot be read (truncated, not JSON, wrong shape)."""


class ClusterLost(BridgeRayError):
    """The cluster's head stopped answering while a command was using it."""


class ClusterUnresponsive(BridgeRayError):
    """The head did not answer in time but may still be there (busy, paused): nothing was recorded."""


class JobsRunning(BridgeRayError):
    """``down`` was asked to stop a cluster that still runs jobs."""


class HomeNotWritable(BridgeRayError):
    """The bridge-ray home (``$BRIDGE_RAY_HOME``) cannot be written."""


class Interrupted(BridgeRayError):
    """The user pressed Ctrl-C; the message says what keeps running and how to get back to it."""

    exit_code = 130
    prefix = ""


class ClusterExists(BridgeRayError):
    """``up`` was asked for a name that already has a live cluster."""


class PortInUse(BridgeRayError):
    """A port the user asked for is already taken."""


class AuthError(BridgeRayError):
    """The Ray token is missing or rejected."""


class RecipeError(BridgeRayError):
    """The recipe path is missing or not a Python file."""


class JobNotFound(BridgeRayError):
    """No job with that submission id on the cluster."""


class WorkingDirTooLarge(BridgeRayError):
    """The working_dir upload would exceed Ray's package limit."""


class ConfigError(BridgeRayError):
    """One or more config values are wrong; all problems are listed together."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PreflightError(BridgeRayError):
    """Something the job needs is missing on the cluster; nothing was started."""


class SlurmError(BridgeRayError):
    """SLURM refused or could not provide the allocation."""


class JobFailed(BridgeRayError):
    """The job ended FAILED or STOPPED. Carries the submission id and the last log lines."""

    exit_code = 1

    def __init__(self, submission_id: str, status: str, message: str = "", log_tail: str = ""):
        self.submission_id = submission_id
        self.status = status
        self.log_tail = log_tail
        detail = f": {message}" if message else ""
        super().__init__(f"job {submission_id} {status}{detail}")


class RunNotFound(BridgeRayError):
    """No run record under that id."""


class RunRecordBroken(BridgeRayError):
    """A run's ``run.json`` cannot be read."""


class HubError(BridgeRayError):
    """The Hub refused or failed the upload."""

    exit_code = 1


class PPOFailed(BridgeRayError):
    """verl's PPO trainer raised; the message ends with its last error line."""

    exit_code = 1


class RewardFailed(BridgeRayError):
    """The custom reward raised or returned something that is not a number; the job fails."""

    exit_code = 1


class TrainingFailed(BridgeRayError):
    """Ray Train gave up on the run (a worker error, or more failures than ``max_failures``)."""

    exit_code = 1


class CheckpointError(BridgeRayError):
    """A checkpoint is missing, cannot be merged, or the merged model does not load."""

    exit_code = 1
