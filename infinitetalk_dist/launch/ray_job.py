"""Entry for ``ray job submit``: the farm on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 -- \\
        python -m infinitetalk_dist.launch.ray_job run --video film.mp4 --audio dub.wav -o out/film.mp4 \\
        farm.replicas=8 farm.gpus_per_replica=2 farm.store=s3://bucket/jobs/film

Same flags and config as ``infinitetalk-dist run`` with ``farm=ray`` preselected; Ray is
reached through ``RAY_ADDRESS``, which ``ray job submit`` sets (``farm.address`` overrides).
Inputs, weights and the store must be reachable from every node (shared volume or URL).
Exit status: 0 done, 1 the job failed (its cause on stderr; finished windows stay in the
store and a new submission resumes), 2 bad arguments.
"""

from __future__ import annotations

import sys

from . import cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "plan"):
        print("usage: python -m infinitetalk_dist.launch.ray_job run|plan [flags] [key=value ...]", file=sys.stderr)
        return 2
    if not any(a.startswith(("farm=", "+farm=", "++farm=")) for a in argv):
        argv.append("farm=ray")
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
