"""A burst of concurrent webhook posts to a receiver on loopback (group-commit tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx


def post_burst(url: str, *, senders: int, posts: int,
               make_post: Callable[[int], tuple[str, bytes, dict]]) -> list[tuple[str, int, dict]]:
    """`posts` Shopify posts over `senders` keep-alive connections started together; post n is
    `make_post(n)` -> (webhook id, body, headers). Returns (webhook id, status, answer) per post."""
    answers: list[tuple[str, int, dict]] = []
    lock = threading.Lock()
    start = threading.Barrier(senders)

    def sender(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            start.wait()
            for n in range(worker, posts, senders):
                webhook_id, body, headers = make_post(n)
                response = client.post("/webhooks/shopify", content=body, headers=headers)
                with lock:
                    answers.append((webhook_id, response.status_code, response.json()))

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers
