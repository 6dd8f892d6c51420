#!/usr/bin/env python
"""The main BTP job: beam-search sampling → sandboxed tests → P2Value-prioritized replay → fine-tuning.

Locally:            python jobs/btp.py [flags]        (no flags: the embedded CPU default, offline)
On a Ray cluster:   ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/btp.py [flags]
Resume a run:       python jobs/btp.py --resume results/btp_<timestamp>
"""

import sys

from btp_ray.cli import build_btp_parser, parse_experiment_args
from btp_ray.pipeline import run_from_args


def main() -> int:
    parser = build_btp_parser("jobs/btp.py")
    args, config = parse_experiment_args(parser, sys.argv[1:])
    if args.print_config:
        from btp_ray.cli import print_config

        print_config(config)
        return 0
    return run_from_args(args, config)


if __name__ == "__main__":
    sys.exit(main())
