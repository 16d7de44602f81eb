"""The one Ray Job Submission client, bound to a cluster record and nothing else.

Ray's ``JobSubmissionClient`` lets the environment redirect it: ``RAY_ADDRESS`` and
``RAY_API_SERVER_ADDRESS`` replace the address it is given (and it then sends its token
there), ``RAY_AUTH_*`` can add another cluster's token, and ``requests`` sends every call
through ``HTTP(S)_PROXY`` / ``ALL_PROXY``. ``RecordClient`` talks to the recorded Jobs API
URL only, with the recorded token only, and never through a proxy, whatever the shell holds.
"""
from __future__ import annotations

from bridge_ray.cluster.auth import auth_headers
from bridge_ray.cluster.records import ClusterRecord

# requests merges the environment's proxies into a call unless the call names them; None drops one.
NO_PROXIES = {"http": None, "https": None, "all": None}
# Seconds to connect, and to wait for the answer: Ray's client sets none, so a paused head (SIGSTOP, a stuck
# GCS) held `runs`, `logs`, `stop` forever. An upload's answer comes once the head has stored the package.
CONNECT_S, ANSWER_S, UPLOAD_ANSWER_S = 10.0, 30.0, 300.0


def quiet_ray_client() -> None:
    """Leave only Ray's errors in the client's log.

    Ray's client logs each step of packaging and uploading the working_dir (INFO and WARNING
    lines about files it leaves out) and the closing of the log stream; bridge-ray sizes and
    checks the upload itself, so those lines only hide the job's own.
    """
    import logging

    import ray.dashboard.modules.dashboard_sdk  # noqa: F401 - these two set their loggers to INFO when imported
    import ray.dashboard.modules.job.sdk  # noqa: F401

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _client_class():
    import ray
    from ray.dashboard.modules.dashboard_sdk import SubmissionClient
    from ray.job_submission import JobSubmissionClient

    class RecordClient(JobSubmissionClient):
        """A ``JobSubmissionClient`` pinned to one URL and one set of headers."""

        def __init__(self, url: str, headers: dict[str, str]):
            self._pinned = (url.rstrip("/"), dict(headers))
            # JobSubmissionClient.__init__ would resolve the address from RAY_ADDRESS first:
            # build the base client with our URL, then run the same version check it runs.
            self._client_ray_version = ray.__version__
            SubmissionClient.__init__(self, address=self._pinned[0], headers=dict(headers))
            self._pin()
            self._check_connection_and_version(
                min_version="2.0", version_error_message="the cluster must run Ray 2.0 or newer")

        def _pin(self) -> None:
            self._address, self._headers = self._pinned[0], dict(self._pinned[1])

        def _do_request(self, method, endpoint, **kwargs):
            self._pin()
            kwargs.setdefault("timeout", (CONNECT_S, UPLOAD_ANSWER_S if "/api/packages/" in endpoint else ANSWER_S))
            return super()._do_request(method, endpoint, proxies=NO_PROXIES, **kwargs)

    return RecordClient


def client(record: ClusterRecord):
    """A JobSubmissionClient for the recorded cluster only, authenticated with its token.

    Raises:
        AuthError: the record's token file is missing.
        ConnectionError: the head does not answer.
    """
    return _client_class()(record.dashboard_url, auth_headers(record))
