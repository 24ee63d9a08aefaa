"""The Locust side of `make loadtest`: simulated clients, headless, bounded in requests and time.

    python -m reliability.load_driver config.json

Run in a process of its own by reliability.loadtest, because importing Locust patches the
standard library for gevent. The config names the endpoint and key, the profile (stages of
users and per-user rates), the bounds, the photographs and the reference answers. Every request
is written to `records_out` as one JSON line: when it started, how long it took, its kind, valid
or not, the status, the outcome class, and API Gateway's request id (to join the function's
platform records: cold starts).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before anything imports ssl/socket; Locust would do it on import anyway

import base64  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from locust import LoadTestShape, User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from reliability.reference import Reference  # noqa: E402

CONFIG: dict[str, Any] = {}
STATE: dict[str, Any] = {
    "records": [],
    "started": 0.0,
    "rate": None,
    "users": 0,
    "in_flight": 0,
    "stopping": False,
}

# Requests that must be refused with a 4xx JSON error, and their share of the traffic.
INVALID_KINDS = ("not_an_image", "truncated", "bad_top_k", "bad_json", "no_api_key", "no_route")
VALID_WEIGHTS = {"photo": 10, "batch": 1, "health": 1}
INVALID_WEIGHT = 1  # each invalid kind: 6 of 18 requests, a third of the traffic


def _stages() -> list[dict[str, Any]]:
    return list(CONFIG["profile"]["stages"])


class ProfileShape(LoadTestShape):
    """Stages of (until second, users, per-user rate or None for back-to-back requests)."""

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for stage in _stages():
            if elapsed < stage["until"]:
                STATE["rate"] = stage.get("rate")
                STATE["users"] = stage["users"]
                return stage["users"], 100.0
        # The profile is over: no new request, but those in flight (a cold start can take
        # seconds) finish and are recorded before the clients stop.
        STATE["stopping"] = True
        if STATE["in_flight"] and elapsed < _stages()[-1]["until"] + CONFIG.get("timeout_s", 60):
            return STATE["users"], 100.0
        STATE["finished"] = True
        return None


class Classifier(User):
    """One client: a mix of valid and invalid requests, each checked."""

    def wait_time(self) -> float:
        rate = STATE["rate"]
        if not rate:
            return 0.0
        return max(0.0, 1.0 / rate - (time.perf_counter() - self._last_start))

    def on_start(self) -> None:
        self.session = requests.Session()
        self.rng = random.Random(CONFIG.get("seed", 0) + id(self))  # noqa: S311 - a traffic mix
        self._last_start = time.perf_counter()
        # A shuffled round of the weighted mix, repeated: every kind comes up in each round of
        # 18 requests, so even a short run sends all of them.
        kinds = [*VALID_WEIGHTS.items(), *((k, INVALID_WEIGHT) for k in INVALID_KINDS)]
        self.schedule = [k for k, w in kinds for _ in range(w)]
        self.rng.shuffle(self.schedule)
        self.sent = 0

    @task
    def one_request(self) -> None:
        if STATE["stopping"]:
            gevent.sleep(0.05)
            return
        STATE["in_flight"] += 1
        try:
            self._one_request()
        finally:
            STATE["in_flight"] -= 1

    def _one_request(self) -> None:
        self._last_start = time.perf_counter()
        kind = self.schedule[self.sent % len(self.schedule)]
        self.sent += 1
        method, path, headers, body, photos = self._build(kind)
        started = time.perf_counter()
        status: int | None = None
        error = None
        request_id = None
        payload: Any = None
        try:
            response = self.session.request(
                method,
                CONFIG["endpoint"] + path,
                headers=headers,
                data=body,
                timeout=CONFIG.get("timeout_s", 60),
            )
            status = response.status_code
            request_id = response.headers.get("x-amzn-RequestId")
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if status >= 500:
                error = response.text[:80]  # which 5xx it is: the gateway's body says
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
        latency_ms = (time.perf_counter() - started) * 1000
        outcome, why = classify(kind, status, payload, photos)
        record = {
            "t": round(started - STATE["started"], 4),
            "ms": round(latency_ms, 3),
            "kind": kind,
            "valid": kind not in INVALID_KINDS,
            "status": status,
            "outcome": outcome,
            "request_id": request_id,
            "users": STATE["users"],
        }
        if error or why:
            record["detail"] = error or why
        STATE["records"].append(record)
        if len(STATE["records"]) >= CONFIG["max_requests"]:
            STATE["stopping"] = STATE["finished"] = True  # the request bound: main() quits

    def _build(self, kind: str) -> tuple[str, str, dict[str, str], bytes | None, list[str]]:
        key = {"x-api-key": CONFIG["api_key"]}
        photos = CONFIG["photos"]
        photo = self.rng.choice(photos)
        data = PHOTO_BYTES[photo["name"]]
        image_headers = {**key, "Content-Type": photo["content_type"]}
        if kind == "photo":
            return "POST", "predict", image_headers, data, [photo["name"]]
        if kind == "batch":
            chosen = [self.rng.choice(photos) for _ in range(2)]
            body = json.dumps(
                {"images": [base64.b64encode(PHOTO_BYTES[p["name"]]).decode() for p in chosen]}
            ).encode()
            json_headers = {**key, "Content-Type": "application/json"}
            return "POST", "predict", json_headers, body, [p["name"] for p in chosen]
        if kind == "health":
            return "GET", "health", key, None, []
        if kind == "not_an_image":
            return "POST", "predict", {**key, "Content-Type": "image/jpeg"}, b"not an image", []
        if kind == "truncated":
            return "POST", "predict", image_headers, data[: len(data) // 3], []
        if kind == "bad_top_k":
            return "POST", "predict?top_k=0", image_headers, data, []
        if kind == "bad_json":
            return "POST", "predict", {**key, "Content-Type": "application/json"}, b'{"image":', []
        if kind == "no_api_key":
            return "POST", "predict", {"Content-Type": photo["content_type"]}, data, []
        return "GET", "labels", key, None, []  # no_route


def classify(kind: str, status: int | None, payload: Any, photos: list[str]) -> tuple[str, str]:
    """The outcome class of one request, and why when it is not the expected one."""
    if status is None:
        return "dropped", ""
    if status >= 500:
        return f"{status}", ""
    if kind in INVALID_KINDS:
        if 400 <= status < 500:
            return (
                ("rejected_as_expected", "")
                if isinstance(payload, dict)
                else (
                    "non_json_4xx",
                    "a 4xx without a JSON body",
                )
            )
        return "accepted_invalid", f"{kind} got {status}"
    if status >= 400:
        return f"{status}_on_valid", ""
    if kind == "health":
        ok = (
            isinstance(payload, dict) and payload.get("model", {}).get("sha256") == REF.model_sha256
        )
        return ("ok", "") if ok else ("wrong", "health names another model")
    entries = payload.get("predictions") if isinstance(payload, dict) else None
    if kind == "batch":
        if not isinstance(entries, list) or len(entries) != len(photos):
            return "wrong", "batch answer of the wrong length"
        bodies = [{"predictions": e, "model": payload.get("model")} for e in entries]
    else:
        bodies = [payload]
    for name, body in zip(photos, bodies, strict=True):
        why = REF.check(name, body)
        if why:
            return "wrong", f"{name}: {why}"
    return "ok", ""


def main(argv: list[str]) -> int:
    global REF, PHOTO_BYTES
    CONFIG.update(json.loads(Path(argv[1]).read_text()))
    REF = Reference.from_json(CONFIG["reference"])
    PHOTO_BYTES = {p["name"]: Path(p["path"]).read_bytes() for p in CONFIG["photos"]}
    # stop_timeout: a client removed when a stage lowers the user count finishes its request
    # first (Locust would otherwise kill it mid-request and the answer would be lost).
    env = Environment(
        user_classes=[Classifier],
        shape_class=ProfileShape(),
        events=events,
        stop_timeout=CONFIG.get("timeout_s", 60),
    )
    runner = env.create_local_runner()
    STATE["started"] = time.perf_counter()
    runner.start_shape()
    # Until the profile has ended (and its requests in flight), the request bound quit the
    # runner, or the hard time bound: whichever comes first.
    deadline = time.monotonic() + CONFIG["max_seconds"]
    while not STATE.get("finished") and time.monotonic() < deadline:
        gevent.sleep(0.1)
    runner.quit()
    runner.greenlet.join(timeout=CONFIG.get("timeout_s", 60))
    # Requests still running when the hard time bound hit: reported, never silently lost.
    for _ in range(STATE["in_flight"]):
        STATE["records"].append(
            {
                "t": CONFIG["max_seconds"],
                "ms": None,
                "kind": "unknown",
                "valid": True,
                "status": None,
                "outcome": "unfinished",
                "request_id": None,
                "users": STATE["users"],
            }
        )
    with Path(CONFIG["records_out"]).open("w") as out:
        for record in STATE["records"]:
            out.write(json.dumps(record) + "\n")
    return 0


REF: Reference
PHOTO_BYTES: dict[str, bytes] = {}

if __name__ == "__main__":
    sys.exit(main(sys.argv))
