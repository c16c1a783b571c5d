#!/usr/bin/env python3
"""LiteLLM's video generation, through its `volcengine/<model>` provider, against `seedq sim`.

Usage: litellm_check.py BASE_URL API_KEY OUT_DIR MODEL...   (BASE_URL like http://127.0.0.1:8787/api/v3)

For each MODEL, as a LiteLLM user would: `litellm.video_generation(model="volcengine/MODEL",
prompt=...)` (no seconds or size: LiteLLM's defaults apply), then
`litellm.video_status` until "completed", then `litellm.video_content` for the bytes, written
to OUT_DIR/<task id>.mp4. LiteLLM has no `bytedance` provider: Ark's task API is reached through
`volcengine/`, with `api_base` set to the sim (LiteLLM strips anything from "/api/" on and
appends "/api/v3/contents/generations/tasks" itself). Prints one JSON line per model: {"id"
(Ark's task id), "video_id" (LiteLLM's), "status", "seconds", "size", "usage", "video"}.

LITELLM_LOCAL_MODEL_COST_MAP=True keeps LiteLLM from fetching its price list at import time:
the test command downloads nothing while it runs.
Install LiteLLM with: pip install -r tests/sdk/requirements.txt
"""

import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

try:
    import litellm
    from litellm.types.videos.utils import extract_original_video_id
except ImportError as e:  # pragma: no cover - the Rust test checks this first
    print(f"litellm is not importable ({e}); "
          "install it with: pip install -r tests/sdk/requirements.txt", file=sys.stderr)
    sys.exit(2)


def main(base_url, api_key, out_dir, models):
    for model in models:
        one(base_url, api_key, out_dir, model)


def one(base_url, api_key, out_dir, model):
    auth = {"api_base": base_url, "api_key": api_key}
    video = litellm.video_generation(
        model=f"volcengine/{model}",
        prompt="a lighthouse in fog, slow pan",
        **auth,
    )
    deadline = time.monotonic() + 30
    while video.status in ("queued", "in_progress"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{video.id} stuck in {video.status}")
        time.sleep(0.05)
        video = litellm.video_status(video_id=video.id, **auth)
    if video.status != "completed":
        raise AssertionError(f"{video.id} ended {video.status}: {video.error}")
    data = litellm.video_content(video_id=video.id, **auth)
    task_id = extract_original_video_id(video.id)
    path = os.path.join(out_dir, f"{task_id}.mp4")
    with open(path, "wb") as f:
        f.write(data)
    print(json.dumps({
        "id": task_id,
        "video_id": video.id,
        "status": video.status,
        "seconds": video.seconds,
        "size": video.size,
        "usage": video.usage,
        "video": path,
    }), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
    except AssertionError as e:
        print(f"litellm_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
