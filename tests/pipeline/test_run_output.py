"""What `sidreasoner run` shows: one line per event. kfp's executor logs each task's input JSON and
its own lines around the stage, and attaches its handler to the root logger before ours."""

from __future__ import annotations

import io
import logging

from components.common.logs import KFP_EXECUTOR_FORMAT, setup_logging
from pipeline.local import ExecutorNoiseFilter

#: What kfp's local runner prints for one task (indented by kfp), around the stage's own lines.
TASK_OUTPUT = """
    [KFP Executor 2026-11-30 09:40:12,375 INFO]: Looking for component `ingest` in --component_module_path `/tmp/x.py`
    [KFP Executor 2026-11-30 09:40:12,376 INFO]: Got executor_input:
    {
        "inputs": {
            "parameterValues": {
                "config": "{\\"format\\":\\"amazon18\\",\\"files\\":{},\\"split\\":[0.8,0.1,0.1]}",
                "run_key": "local-1"
            }
        },
        "outputs": {"artifacts": {"items": {"artifacts": [{"name": "items", "metadata": {}}]}}}
    }
    09:40:13 INFO components.ingest.stage: ingest: 250 items, 800 users
    09:40:14 INFO components.common.stage: ingest: done
    [KFP Executor 2026-11-30 09:40:14,101 INFO]: Wrote executor output file to /tmp/out.json.

"""


def test_the_executor_dump_and_lines_are_dropped_the_stage_lines_kept():
    out = io.StringIO()
    noise = ExecutorNoiseFilter(out)
    for line in TASK_OUTPUT.splitlines(keepends=True):  # kfp writes the indent and the line separately
        noise.write(line[:4])
        noise.write(line[4:])
    kept = [line.strip() for line in out.getvalue().splitlines() if line.strip()]
    assert kept == ["09:40:13 INFO components.ingest.stage: ingest: 250 items, 800 users",
                    "09:40:14 INFO components.common.stage: ingest: done"]


#: What kfp's local runner prints around a task, our handler in place of the executor's.
RUNNER_OUTPUT = """\
13:20:09.908 - INFO - Executing task \x1b[96m'ingest'\x1b[0m
13:20:09.908 - INFO - Streamed logs:

    13:20:12 INFO components.ingest.stage: ingest: 255 items, 704 users
    13:20:12 INFO root: Wrote executor output file to /tmp/run/ingest/executor_output.json.


13:20:13.424 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
13:20:13.424 - INFO - Task \x1b[96m'ingest'\x1b[0m outputs:
    items: Dataset( name='items',
                    uri='/tmp/run/ingest/items',
                    metadata={'digest': 'sha256:8e11', 'rows': 255.0} )
--------------------------------------------------------------------------------
13:20:13.426 - INFO - Executing task \x1b[96m'sid-quantize'\x1b[0m
"""


def test_a_task_reads_as_its_start_its_stage_lines_and_its_end():
    out = io.StringIO()
    ExecutorNoiseFilter(out).write(RUNNER_OUTPUT)
    assert out.getvalue().splitlines() == [
        "13:20:09.908 - INFO - Executing task \x1b[96m'ingest'\x1b[0m",
        "    13:20:12 INFO components.ingest.stage: ingest: 255 items, 704 users",
        "13:20:13.424 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
        "-" * 80,
        "13:20:13.426 - INFO - Executing task \x1b[96m'sid-quantize'\x1b[0m"]


def test_inside_a_kfp_task_each_record_is_printed_once(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    logging.basicConfig(stream=io.StringIO(), format=KFP_EXECUTOR_FORMAT + "%(asctime)s %(levelname)s]: %(message)s",
                        level=logging.INFO)  # what kfp.dsl.executor_main does first
    setup_logging()
    assert len(root.handlers) == 1
    assert not getattr(root.handlers[0].formatter, "_fmt", "").startswith(KFP_EXECUTOR_FORMAT)
