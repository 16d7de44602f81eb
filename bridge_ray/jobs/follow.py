"""Following a job's log until the job ends, every line once and in order.

Ray's log stream alone is not enough: it closes ~5 s after the job ended, and while the head's GCS
is gone it stays open for Ray's 60 s reconnect timeout. So three things run side by side: the log
tail, a watch on the job's status and a watch on the head's GCS; the first to finish decides.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from bridge_ray import runs
from bridge_ray.cluster import health
from bridge_ray.cluster.records import ClusterRecord

POLL_S = 0.25


async def stream(client, record: ClusterRecord, submission_id: str, write: Callable[[str], None]) -> bool:
    """Write the job's log to ``write`` until the job or its log stream ends (True), or the head's GCS
    goes away (False). When the job ends first, the lines the stream had not delivered yet are read
    from the whole log, so none is lost and none is written twice."""
    shown = 0  # log lines written so far

    async def tail() -> None:
        nonlocal shown
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk.rstrip("\n"))
            shown += len(chunk.splitlines())

    tasks = tailing, _, ending = (asyncio.ensure_future(tail()), asyncio.ensure_future(health.watch_gcs(record)),
                                  asyncio.ensure_future(_ended(client, submission_id)))
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # the log's session closes
    if tailing.done() and not tailing.cancelled():
        tailing.result()  # its error, if the stream broke
        return True
    if ending.done() and not ending.cancelled():
        whole = await asyncio.get_running_loop().run_in_executor(None, client.get_job_logs, submission_id)
        if rest := "\n".join(whole.splitlines()[shown:]).rstrip("\n"):
            write(rest)
        return True
    return False


async def _ended(client, submission_id: str) -> None:
    """Returns once Ray says the job has ended."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            info = await loop.run_in_executor(None, client.get_job_info, submission_id)
            if str(info.status.value) in runs.TERMINAL:
                return
        except Exception:  # noqa: BLE001 - a head going away is the GCS watch's to report
            pass
        await asyncio.sleep(POLL_S)
