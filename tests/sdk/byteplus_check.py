#!/usr/bin/env python3
"""The official BytePlus Python SDK (`byteplus-python-sdk-v2`) against `seedq sim`.

Usage: byteplus_check.py BASE_URL API_KEY OUT_DIR MODEL...   (BASE_URL like http://127.0.0.1:8787/api/v3)

For each MODEL, as a BytePlus user would: create a text-to-video task with
`client.content_generation.tasks.create` (5 s, no resolution: the model's default applies),
poll `tasks.get` until it succeeds, and download `content.video_url` to OUT_DIR/<task id>.mp4
(the SDK has no download call; the URL is a plain HTTPS link on Ark). Prints one JSON line
per task: {"model", "id", "status", "resolution", "ratio", "duration", "completion_tokens",
"total_tokens", "video"}. Run by tests/it/clients.rs, which compares the bytes with the sim's.
Install the SDK with: pip install -r tests/sdk/requirements.txt
"""

import json
import os
import sys
import time
import urllib.request

try:
    from byteplussdkarkruntime import Ark
except ImportError as e:  # pragma: no cover - the Rust test checks this first
    print(f"byteplussdkarkruntime is not importable ({e}); "
          "install it with: pip install -r tests/sdk/requirements.txt", file=sys.stderr)
    sys.exit(2)


def wait_succeeded(tasks, task_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        t = tasks.get(task_id=task_id)
        if t.status == "succeeded":
            return t
        if t.status not in ("queued", "running"):
            raise AssertionError(f"{task_id} ended {t.status}: {t.error}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} stuck in {t.status}")
        time.sleep(0.05)


def main(base_url, api_key, out_dir, models):
    # region is only used for AK/SK signing; an API key goes as a Bearer token.
    client = Ark(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    tasks = client.content_generation.tasks
    for model in models:
        created = tasks.create(
            model=model,
            content=[{"type": "text", "text": "a paper boat drifting down a gutter"}],
            duration=5,
        )
        done = wait_succeeded(tasks, created.id)
        path = os.path.join(out_dir, f"{created.id}.mp4")
        with urllib.request.urlopen(done.content.video_url, timeout=30) as r, \
                open(path, "wb") as f:
            f.write(r.read())
        print(json.dumps({
            "model": done.model,
            "id": done.id,
            "status": done.status,
            "resolution": done.resolution,
            "ratio": done.ratio,
            "duration": done.duration,
            "completion_tokens": done.usage.completion_tokens,
            "total_tokens": done.usage.total_tokens,
            "video": path,
        }), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
    except AssertionError as e:
        print(f"byteplus_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
