"""Start one stack process from a command passed in BENCH_EXEC (JSON), in this interpreter.

``gunicorn ...``, ``celery ...`` and ``python -m MODULE ...`` run exactly as from the shell, but
the process's command line reads ``python -m loadtests.launch NAME``: on this shared machine
someone's ``pkill -f gunicorn`` (or celery, or realtime) then leaves the benchmark's stack alone.
"""

import json
import os
import runpy
import sys

argv = json.loads(os.environ.pop("BENCH_EXEC"))
if argv[0].endswith("gunicorn"):
    from gunicorn.app.wsgiapp import run

    sys.argv = argv
    sys.exit(run())
elif argv[0].endswith("celery"):
    from celery.__main__ import main

    sys.argv = argv
    sys.exit(main())
elif argv[1:2] == ["-m"]:
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
else:
    sys.exit(f"loadtests.launch: cannot run {argv!r}")
