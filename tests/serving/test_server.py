"""The pyfunc behind a real ``mlflow models serve`` process on 127.0.0.1 (started through
``sidreasoner serve``), asked over HTTP: answers to good requests, 400s naming the field to bad
ones, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from components.common import artifacts
from tests.conftest import BIN, free_port, stop, wait_http


def start_server(model_uri: str, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[
        subprocess.Popen, str]:
    """``sidreasoner serve --model-uri URI`` on a free port; returns the process and its base URL."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(BIN / "sidreasoner"), "serve", "--model-uri", model_uri, "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", 180, proc)
    except BaseException:
        stop(proc)
        raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-3000:]}") from None
    return proc, url


def post(url: str, body: Any, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(servable, tmp_path_factory) -> Iterator[str]:
    proc, url = start_server(str(servable), tmp_path_factory.mktemp("serve") / "server.log")
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def history(eval_inputs) -> list[str]:
    return list(artifacts.read_samples(eval_inputs.samples).split("test")[-1].history)


def test_a_request_gets_k_ranked_item_ids_with_titles(server, served, catalog, history):
    status, body = post(server, {"dataframe_records": [{"user_id": "u1", "history": history}], "params": {"k": 5}})
    assert status == 200
    (row,) = body["predictions"]
    assert row["user_id"] == "u1" and len(row["item_ids"]) == 5
    assert row["titles"] == [catalog.title_of[i] for i in row["item_ids"]]
    assert row["reasoning"] is None
    import pandas as pd

    local = served.predict(pd.DataFrame({"user_id": ["u1"], "history": [history]}), params={"k": 5})
    assert row["item_ids"] == list(local["item_ids"][0])  # the same model, in process and over HTTP


def test_several_rows_defaults_thinking_and_the_split_format(server, history):
    status, body = post(server, {"dataframe_split": {"columns": ["history"], "data": [[history], [history[-2:]]]}})
    assert status == 200 and [len(r["item_ids"]) for r in body["predictions"]] == [10, 10]  # default k
    assert all(r["user_id"] is None for r in body["predictions"])
    status, body = post(server, {"dataframe_records": [{"history": history}],
                                 "params": {"mode": "thinking", "max_reasoning_tokens": 4, "k": 3}})
    assert status == 200
    (row,) = body["predictions"]
    assert isinstance(row["reasoning"], str) and 0 < row["reasoning_tokens"] <= 4 and len(row["item_ids"]) == 3


def test_concurrent_requests_get_what_they_asked_for(server, history):
    """The server runs requests in threads; each keeps its own k and beam."""
    bodies = [{"dataframe_records": [{"history": history}], "params": {"k": k, "beam_width": k + 2}}
              for k in (2, 7, 4, 9)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: post(server, body), bodies))
    assert [(status, len(body["predictions"][0]["item_ids"])) for status, body in answers] == \
        [(200, 2), (200, 7), (200, 4), (200, 9)]


@pytest.mark.parametrize("body, names", [
    ({"dataframe_records": [{"history": ["no-such-item"]}]}, "history[0]: 1 item id(s) not in the catalog"),
    ({"dataframe_records": [{"history": []}]}, "history[0]: empty history"),
    ({"dataframe_records": [{"history": "B000000001"}]}, "column history"),
    ({"dataframe_records": [{"history": [1, 2]}]}, "column history"),
    ({"dataframe_records": [{"history": ["ITEM"], "user_id": 5}]}, "user_id"),
    ({"dataframe_records": [{"history": ["ITEM"]}], "params": {"k": 20}}, "param k: 20 is outside [1, 10] (k larger "
                                                                         "than the beam"),
    ({"dataframe_records": [{"history": ["ITEM"]}], "params": {"k": "ten"}}, "'k'"),
    ({"dataframe_records": [{"history": ["ITEM"]}], "params": {"mode": "fast"}}, "param mode: must be one of"),
    ({"dataframe_records": [{"history": ["ITEM"]}], "params": {"beam_width": 0}}, "param beam_width: 0 is outside"),
    ({"dataframe_records": [{"hist": ["ITEM"]}]}, "missing inputs ['history']"),
    ({"records": [{"history": ["ITEM"]}]}, "dataframe_records"),
    (b"{not json", "valid JSON"),
])
def test_bad_requests_get_400_naming_the_field_and_no_traceback(server, history, body, names):
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"ITEM"', json.dumps(history[0])))
    status, answer = post(server, body)
    assert status == 400, answer
    assert answer["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
    assert names in answer["message"]
    assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)


def test_serve_refuses_settings_the_model_does_not_have():
    result = subprocess.run([str(BIN / "sidreasoner"), "serve", "--model-uri", "models:/m@production",
                             "--tracking-uri", "sqlite:///x.db", "--serving", "engin=vllm"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--serving 'engin=vllm': expected KEY=VALUE with KEY one of" in result.stderr
