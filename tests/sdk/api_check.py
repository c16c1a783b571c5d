#!/usr/bin/env python3
"""Official SDKs against seedq's front doors (`seedq serve` with [api] listen), `seedq sim` as Ark.

Usage: api_check.py DOOR_ROOT KEY_A KEY_B SIM_BASE SIM_KEY
  DOOR_ROOT like http://127.0.0.1:9190 (the Ark door is DOOR_ROOT/api/v3, OpenAI's DOOR_ROOT/v1)

Run by tests/it/api.rs. With the official Volcengine SDK: create -> poll -> download through the
Ark door, the bytes equal the simulator's video; an Idempotency-Key repeated with the same body
gives the same id and with another body a 409; a wrong key is refused; key B neither reads nor
cancels key A's task. With the official `openai` SDK: videos.create, retrieve until completed,
download_content (bytes equal the simulator's), list, delete. Exits non-zero on the first failure.
"""

import struct
import sys
import time
import urllib.request
import zlib

from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import (
    ArkAuthenticationError,
    ArkConflictError,
    ArkNotFoundError,
)
import openai

PRO = "doubao-seedance-1-0-pro-250528"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def png(width, height):
    """A plain grey RGB PNG (the standard library has no image writer)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    raw = b"".join(b"\x00" + b"\x80" * (width * 3) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def sim_video(sim, job_id):
    """The simulator's own video of the task seedq created for job_id (tagged seedq-<id>)."""
    for t in sim.content_generation.tasks.list(page_size=500).items:
        if getattr(t, "safety_identifier", None) == f"seedq-{job_id}":
            return fetch(t.content.video_url)
    raise AssertionError(f"no simulator task carries seedq-{job_id}")


def main():
    root, key_a, key_b, sim_base, sim_key = sys.argv[1:6]
    sim = Ark(base_url=sim_base, api_key=sim_key)
    # No SDK retries: a 409 or 404 is the answer under test, not a transient failure.
    a = Ark(base_url=f"{root}/api/v3", api_key=key_a, max_retries=0)
    b = Ark(base_url=f"{root}/api/v3", api_key=key_b, max_retries=0)
    tasks = a.content_generation.tasks

    content = [{"type": "text", "text": "a lighthouse at dusk"}]
    created = tasks.create(model=PRO, content=content, duration=5, resolution="720p")
    check(created.id, "create answers an id")
    again = tasks.create(model=PRO, content=content, duration=5, resolution="720p")
    check(again.id != created.id, "without an Idempotency-Key every create is a job")

    idem = {"Idempotency-Key": "check-1"}
    one = tasks.create(model=PRO, content=content, extra_headers=idem)
    two = tasks.create(model=PRO, content=content, extra_headers=idem)
    check(one.id == two.id, f"same key and body: same id ({one.id} vs {two.id})")
    try:
        tasks.create(model=PRO, content=[{"type": "text", "text": "other"}], extra_headers=idem)
        raise AssertionError("same key, other body was accepted")
    except ArkConflictError:
        pass

    try:
        Ark(base_url=f"{root}/api/v3", api_key="sq_wrong", max_retries=0).content_generation.tasks.get(task_id=created.id)
        raise AssertionError("a wrong key was let in")
    except ArkAuthenticationError:
        pass
    try:
        b.content_generation.tasks.get(task_id=created.id)
        raise AssertionError("key B read key A's task")
    except ArkNotFoundError:
        pass
    try:
        b.content_generation.tasks.delete(task_id=created.id)
        raise AssertionError("key B cancelled key A's task")
    except ArkNotFoundError:
        pass
    check(b.content_generation.tasks.list(page_size=50).total == 0, "key B lists none of A's")

    deadline = time.monotonic() + 60
    while True:
        t = tasks.get(task_id=created.id)
        if t.status == "succeeded":
            break
        check(t.status in ("queued", "running"), f"task ended {t.status}: {t.error}")
        check(time.monotonic() < deadline, f"task stuck in {t.status}")
        time.sleep(0.1)
    check(t.resolution == "720p" and t.duration == 5, f"shape echoed: {t.resolution} {t.duration}")
    check(t.usage is not None and t.usage.total_tokens > 0, "usage filled in")
    check(t.service_tier == "default", "service tier filled in")
    got = fetch(t.content.video_url)
    want = sim_video(sim, created.id)
    check(len(got) > 0 and got == want, f"door video ({len(got)} B) equals the sim's ({len(want)} B)")
    print(f"ark door: video of {len(got)} bytes equals the simulator's", flush=True)

    page = tasks.list(page_size=2, page_num=1)
    check(page.total == 3 and len(page.items) == 2, f"list pages: {page.total} {len(page.items)}")
    done = tasks.list(status="succeeded")
    check(created.id in [x.id for x in done.items], "filter.status=succeeded finds it")
    check(all(x.status == "succeeded" for x in done.items), "filter.status=succeeded only")
    picked = tasks.list(task_ids=[created.id, one.id])
    check(sorted(x.id for x in picked.items) == sorted([created.id, one.id]), "filter.task_ids")

    tasks.delete(task_id=created.id)
    try:
        tasks.get(task_id=created.id)
        raise AssertionError("a deleted record is still readable")
    except ArkNotFoundError:
        pass

    # The OpenAI door.
    oa = openai.OpenAI(base_url=f"{root}/v1", api_key=key_a, max_retries=0)
    v = oa.videos.create(model=PRO, prompt="a fox in the snow", seconds="5", size="1280x720")
    check(v.status == "queued" and v.object == "video", f"created: {v.status}")
    try:
        oa.videos.create(model=PRO, prompt="x", size="1024x1792")
        raise AssertionError("a size with no Seedance shape was accepted")
    except openai.BadRequestError as e:
        check("1024x1792" in str(e), f"size refusal names the value: {e}")
    deadline = time.monotonic() + 60
    while v.status in ("queued", "in_progress"):
        check(time.monotonic() < deadline, f"video stuck in {v.status}")
        time.sleep(0.1)
        v = oa.videos.retrieve(v.id)
    check(v.status == "completed", f"video ended {v.status}: {v.error}")
    check(v.progress == 100 and v.completed_at and v.size == "1280x720", f"video fields {v}")
    data = oa.videos.download_content(v.id).read()
    check(data == sim_video(sim, v.id), "openai door video equals the sim's")
    print(f"openai door: video of {len(data)} bytes equals the simulator's", flush=True)
    listed = [x.id for x in oa.videos.list(limit=1)]
    check(listed == [v.id], f"list: {listed}")
    page = oa.videos.list(limit=1)
    check(page.has_more is False and page.last_id == v.id, f"one video, one page: {page}")
    try:
        openai.OpenAI(base_url=f"{root}/v1", api_key=key_b, max_retries=0).videos.retrieve(v.id)
        raise AssertionError("key B retrieved key A's video")
    except openai.NotFoundError:
        pass
    # input_reference, uploaded as a file, becomes the first frame.
    # With an Idempotency-Key, a retried multipart create (a new random boundary) is the same.
    frame_args = dict(model=PRO, prompt="the scene moves", seconds="5", size="1280x720",
                      input_reference=("frame.png", png(1280, 720), "image/png"),
                      extra_headers={"Idempotency-Key": "oa-1"})
    framed = oa.videos.create(**frame_args)
    check(oa.videos.create(**frame_args).id == framed.id, "multipart retry: same video")
    deadline = time.monotonic() + 60
    while framed.status in ("queued", "in_progress"):
        check(time.monotonic() < deadline, f"framed video stuck in {framed.status}")
        time.sleep(0.1)
        framed = oa.videos.retrieve(framed.id)
    check(framed.status == "completed", f"framed video ended {framed.status}: {framed.error}")
    print(f"framed\t{framed.id}", flush=True)
    oa.videos.delete(framed.id)
    replay = oa.videos.create(**frame_args)
    check(replay.id == framed.id and replay.status == "completed",
          f"a replay after the delete answers from the job: {replay.id} {replay.status}")
    gone = oa.videos.delete(v.id)
    check(gone.deleted and gone.id == v.id, "delete")
    try:
        oa.videos.retrieve(v.id)
        raise AssertionError("a deleted video is still there")
    except openai.NotFoundError:
        pass
    print("ok", flush=True)


if __name__ == "__main__":
    main()
