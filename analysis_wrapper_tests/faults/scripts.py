"""Python programs the fault suite runs with ``python -c`` (``test_races``, ``test_secrets``): a worker
that runs CLI commands on a release signal, and one inbox-sensor tick as the daemon evaluates it."""

# A worker imports everything once, then runs one command per step, each on its own fresh home,
# released with the other workers by the step's gate file. stdout and stderr of a step go (at the file
# descriptor level, so Dagster's and logging's output too) to the step's files.
WORKER = r"""
import json, os, sys, time, traceback
plan = json.loads(open(sys.argv[1]).read())
me = sys.argv[2]
from analysis_wrapper.cli import main
from analysis_wrapper.resources.record_store import close_all_stores
for step in plan:
    open(step["gate"] + ".ready." + me, "w").close()
    while not os.path.exists(step["gate"]):
        time.sleep(0.002)
    os.environ.update(step["env"])
    for name in step.get("unset", []):
        os.environ.pop(name, None)
    sys.stdout.flush(); sys.stderr.flush()
    with open(step["out"], "wb") as out, open(step["err"], "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = main(step["args"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush(); sys.stderr.flush()
    close_all_stores()
    open(step["code"], "w").write(str(code))
"""

# What the daemon's sensor evaluation does on this home: the inbox sensor's tick, evaluated in a
# process of its own. It opens the instance as the CLI does (``session.open_instance``, under a lock):
# Dagster's own processes create their SQLite schemas unguarded, and two of them starting together on an
# empty folder can break it whatever this package does (the README says to start the CLI first there).
TICK = r"""
import os, sys
from pathlib import Path
from dagster import build_sensor_context
from analysis_wrapper.session import open_instance
from analysis_wrapper.definitions import defs
instance = open_instance(Path(os.environ["DAGSTER_HOME"]))
sensor = defs.resolve_sensor_def(sys.argv[1])
with build_sensor_context(
    instance=instance, definitions=defs, resources=defs.resources, sensor_name=sensor.name
) as context:
    result = sensor(context)
print("tick:", type(result).__name__)
"""
