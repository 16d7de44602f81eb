"""Smoke test of the whole path: report the cluster's nodes and what a task on each sees.

Run:
    bridge-ray up && bridge-ray submit recipes/hello_cluster.py --follow && bridge-ray down
    bridge-ray submit recipes/hello_cluster.py --env NCCL_DEBUG=INFO -- --show NCCL_DEBUG
"""
import argparse

from bridge_ray.cluster.report import cluster_report

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="append", default=[], help="also print this env var (repeatable)")
    parser.add_argument("--fail", action="store_true", help="exit non-zero at the end (to test failure paths)")
    args = parser.parse_args()
    print(cluster_report(extra_env=args.show))
    if args.fail:
        raise SystemExit("hello_cluster: failing on purpose (--fail)")
