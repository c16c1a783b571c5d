#!/usr/bin/env python3
"""The official Ark Python SDK against `seedq sim`: create, get, list, delete and errors.

Usage: sdk_check.py BASE_URL API_KEY [--cases-only]   (BASE_URL like http://127.0.0.1:8787/api/v3)

Run by the Rust test `sim::tests::official_python_sdk_works_against_the_simulator` against a
simulator with a tiny time scale. The SDK sends every unset create field as JSON null, builds
list queries with a repeated `filter.task_ids` key, and reads the echoed X-Client-Request-Id;
this script checks the simulator copes with all of that. Exits non-zero on the first failure.

It also sends every case of validation_cases.json (what Ark accepts must be
accepted) and prints one `verdict<TAB>name<TAB>accept|PARAM` line per case. With
--cases-only it sends only those and does not judge them: `tests/it/validation.rs` compares
the lines with `seedq submit`'s verdicts and with the file's `expect`.
Install the SDK with: python3 -m pip install -r tests/sdk/requirements.txt
"""

import json
import os
import sys
import time
import urllib.request

try:
    from volcenginesdkarkruntime import Ark
    from volcenginesdkarkruntime._exceptions import (
        ArkAuthenticationError,
        ArkBadRequestError,
        ArkNotFoundError,
    )
except ImportError as e:  # pragma: no cover - the Rust test checks this first
    print(f"volcenginesdkarkruntime is not importable ({e}); "
          "install it with: pip install 'volcengine-ark-runtime==5.0.54'", file=sys.stderr)
    sys.exit(2)

PRO = "doubao-seedance-1-0-pro-250528"
V20 = "doubao-seedance-2-0-260128"
CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validation_cases.json")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wait_for(client, task_id, status, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        t = client.content_generation.tasks.get(task_id=task_id)
        if t.status == status:
            return t
        check(t.status in ("queued", "running"), f"{task_id} ended {t.status}, wanted {status}")
        check(time.monotonic() < deadline, f"{task_id} stuck in {t.status}")
        time.sleep(0.02)


def load_cases():
    with open(CASES, encoding="utf-8") as f:
        return json.load(f)["cases"]


def send_cases(tasks):
    """Creates each validation case through the SDK; returns {name: (verdict, task id)}."""
    verdicts = {}
    for case in load_cases():
        content = [{"type": "text", "text": f"validation case: {case['name']}"}]
        if "draft_task" in case:
            content.append({"type": "draft_task", "draft_task": {"id": case["draft_task"]}})
        try:
            created = tasks.create(model=case["model"], content=content, **case["fields"])
            verdict, task_id = "accept", created.id
        except ArkBadRequestError as e:
            verdict, task_id = (e.param or f"{e.code} without param"), None
        print(f"verdict\t{case['name']}\t{verdict}", flush=True)
        verdicts[case["name"]] = (verdict, task_id)
    return verdicts


def check_cases(client, tasks):
    """The sim's verdicts are the file's; accepted 2.x tasks echo a seed and report tool use."""
    verdicts = send_cases(tasks)
    for case in load_cases():
        verdict, task_id = verdicts[case["name"]]
        check(verdict == case["expect"], f"{case['name']}: got {verdict}, want {case['expect']}")
        if task_id is None:
            continue
        t = tasks.get(task_id=task_id)
        # docs/ark-api.md §3.2: a real 2.0 task echoes the seed it used.
        check(isinstance(t.seed, int) and 0 <= t.seed <= 4294967295,
              f"{case['name']}: seed echoed {t.seed!r}")
        if case["fields"].get("tools"):
            done = wait_for(client, task_id, "succeeded")
            tool_usage = getattr(done.usage, "tool_usage", None)
            if isinstance(tool_usage, dict):
                searches = tool_usage.get("web_search")
            else:
                searches = getattr(tool_usage, "web_search", None)
            # docs/ark-api.md §3.1: usage.tool_usage.web_search on 2.0 with tools.
            check(searches == 1, f"{case['name']}: tool_usage {tool_usage!r}")


def main(base_url, api_key, cases_only=False):
    client = Ark(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    tasks = client.content_generation.tasks
    if cases_only:
        send_cases(tasks)
        return

    # Create: the SDK sends all 20 optional keys, unset ones as null.
    created = tasks.create(
        model=PRO,
        content=[{"type": "text", "text": "a red kite over the sea --wm false"}],
        seed=7,
        duration=5,
        resolution="720p",
        ratio="16:9",
        return_last_frame=True,
    )
    check(created.id.startswith("cgt-") and len(created.id) == 24, f"id {created.id}")

    first = tasks.get(task_id=created.id)
    check(first.id == created.id and first.model == PRO, "get echoes id and model")
    check(first.status in ("queued", "running", "succeeded"), f"status {first.status}")

    done = wait_for(client, created.id, "succeeded")
    check(done.seed == 7, f"seed {done.seed}")
    check(done.resolution == "720p" and done.ratio == "16:9", "resolution and ratio")
    check(done.duration == 5 and done.framespersecond == 24, "duration and fps")
    check(done.service_tier == "default", f"tier {done.service_tier}")
    check(done.execution_expires_after == 172800, "default expiry")
    check(done.usage.completion_tokens == 1248 * 704 * 121 // 1024, f"usage {done.usage}")
    check(done.usage.total_tokens == done.usage.completion_tokens, "total == completion")
    check(done.updated_at > done.created_at, "updated_at moves")
    video = urllib.request.urlopen(done.content.video_url, timeout=10).read()
    check(video[4:8] == b"ftyp", "the video is an MP4")
    frame = urllib.request.urlopen(done.content.last_frame_url, timeout=10).read()
    check(frame[:8] == b"\x89PNG\r\n\x1a\n", "the last frame is a PNG")

    # A second task on a 2.x model: the seed it used is echoed (docs/ark-api.md §3.2 shows a real
    # 2.0 task with "seed":1276), audio on by default.
    other = tasks.create(model=V20, content=[{"type": "text", "text": "city lights"}])
    o = tasks.get(task_id=other.id)
    check(isinstance(o.seed, int) and o.seed >= 0, f"2.0 echoes its seed: {o.seed!r}")
    check(o.generate_audio is True, "2.0 generate_audio defaults to true")

    # List: repeated filter.task_ids, status and page_size.
    listed = tasks.list(page_size=10, status="succeeded", task_ids=[created.id, other.id])
    ids = [i.id for i in listed.items]
    check(created.id in ids, f"list finds the succeeded task: {ids}")
    check(listed.total == len(ids) and listed.total >= 1, f"total {listed.total} vs {ids}")
    by_model = tasks.list(model=V20)
    check([i.id for i in by_model.items] == [other.id], "model filter")
    both = tasks.list(task_ids=[created.id, other.id])
    check(both.total == 2 and both.items[0].id == other.id, "newest first")

    # Delete a finished task: gone afterwards.
    tasks.delete(task_id=created.id)
    try:
        tasks.get(task_id=created.id)
        raise AssertionError("deleted task still found")
    except ArkNotFoundError as e:
        check(e.status_code == 404, "404 after delete")
        check(e.request_id, "the client request id is echoed")

    # Errors map to the SDK's exception classes with code and param.
    try:
        tasks.create(model=PRO, content=[{"type": "text", "text": "x"}], duration=99)
        raise AssertionError("duration 99 accepted")
    except ArkBadRequestError as e:
        check(e.code == "InvalidParameter" and e.param == "duration", f"{e.code} {e.param}")
        check(e.type == "BadRequest", f"type {e.type}")
    bad = Ark(base_url=base_url, api_key="wrong-key", max_retries=0, timeout=30)
    try:
        bad.content_generation.tasks.get(task_id=other.id)
        raise AssertionError("wrong key accepted")
    except ArkAuthenticationError as e:
        check(e.code == "AuthenticationError", f"code {e.code}")

    # The validation cases, through the SDK (after the list checks above,
    # which count the tasks on V20).
    check_cases(client, tasks)

    print("sdk_check: ok")


if __name__ == "__main__":
    args = sys.argv[1:]
    only = "--cases-only" in args
    args = [a for a in args if a != "--cases-only"]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(args[0], args[1], cases_only=only)
    except AssertionError as e:
        print(f"sdk_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
