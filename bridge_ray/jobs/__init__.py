"""Submitting and following jobs on a recorded cluster.

- ``submission``: ``plan`` and ``submit`` through the one Ray Job Submission client, arguments checked here first;
- ``job``: ``Job`` (follow, wait, stop), ``list_jobs`` and the run records it keeps current;
- ``runtime_env``: what a job carries (its working_dir and an allow-listed env);
- ``credentials``: its secrets, in a 0600 file instead of the runtime_env;
- ``tracking``: its Weights & Biases names and env;
- ``launch``: its entrypoint on the cluster (``python -m bridge_ray.jobs.launch``) and the local check;
- ``progress``: what a person following it sees.

The names callers use are here; patch private ones (``_send``) in their module.
"""
from bridge_ray.jobs.runtime_env import SubmitPlan
from bridge_ray.jobs.job import Job, list_jobs, list_runs, load_run, refresh_run
from bridge_ray.jobs.submission import check_recipe, plan, submit

__all__ = ["Job", "SubmitPlan", "check_recipe", "list_jobs", "list_runs", "load_run",
           "plan", "refresh_run", "submit"]
