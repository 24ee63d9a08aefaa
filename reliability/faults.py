"""Fault injection against the local endpoint, one scenario per fault the function depends on.

Each scenario injects its fault from outside the function: through the S3 proxy (s3_proxy.py)
in front of moto's server, by switching the environments' /tmp to a full device, by editing or
deleting the cached model file, or by killing an environment's process. It sends real requests
through the gateway while the fault holds, then removes the fault and keeps sending until the
right answer comes back, and records what the client saw, how long the service took to recover
by itself, and every 200 checked against the reference (reference.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from local_mode.endpoint import LocalEndpoint, local_endpoint
from local_mode.environments import Concurrency, Environment, PlatformEvent
from local_mode.s3 import local_s3

from .reference import Reference
from .s3_proxy import FaultyS3Proxy, faulty_s3_proxy

RECOVERY_BUDGET_S = 90.0  # a scenario that has not recovered by then is reported as not recovered
POLL_INTERVAL_S = 0.1
SLOW_S3_DELAY_S = 2.0


@dataclass
class FaultOutcome:
    name: str
    injected: str  # how the fault was made
    client_saw: dict[str, int]  # status -> requests, while the fault held and until right
    wrong_answers: int
    answers_checked: int  # 200s compared with the reference in this scenario
    recovered: bool
    recovery_s: float | None  # from the fault's end (or the kill) to the first right 200
    requests_to_recover: int
    cold_starts: int
    s3_requests: int
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Recorder:
    events: list[PlatformEvent] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: PlatformEvent) -> None:
        with self.lock:
            self.events.append(event)
        if event["type"] == "platform.start":
            self.started.set()

    def init_reports(self) -> list[PlatformEvent]:
        with self.lock:
            return [e for e in self.events if e["type"] == "platform.initReport"]


class FaultLab:
    """A local endpoint whose S3 goes through a fault proxy, plus a checking client."""

    def __init__(
        self,
        ep: LocalEndpoint,
        proxy: FaultyS3Proxy,
        reference: Reference,
        photos: list[Path],
        recorder: _Recorder,
    ) -> None:
        self.ep, self.proxy, self.reference, self.recorder = ep, proxy, reference, recorder
        self.photos = [p for p in photos if p.name in reference.answers]
        self.session = requests.Session()
        self.headers = {"x-api-key": ep.api_key}
        self.wrong: list[str] = []
        self.checked = 0
        self._next = 0

    @property
    def pool(self) -> Any:
        return self.ep.pool

    # -- the client -------------------------------------------------------------------------

    def predict(self) -> int:
        """POST the next photograph; check a 200 against the reference. Returns the status."""
        photo = self.photos[self._next % len(self.photos)]
        self._next += 1
        content_type = self.reference.answers[photo.name].content_type
        response = self.session.post(
            self.ep.endpoint + "predict",
            data=photo.read_bytes(),
            headers={**self.headers, "Content-Type": content_type},
            timeout=120,
        )
        self._check(photo.name, response)
        return response.status_code

    def predict_batch(self) -> requests.Response:
        """A batch of 8 photographs: long enough to be killed in the middle of."""
        names = [self.photos[i % len(self.photos)] for i in range(8)]
        body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in names]}
        response = self.session.post(
            self.ep.endpoint + "predict", json=body, headers=self.headers, timeout=120
        )
        if response.status_code == 200:
            for photo, entry in zip(names, response.json()["predictions"], strict=True):
                self._record(photo.name, {"predictions": entry, "model": response.json()["model"]})
        return response

    def _check(self, name: str, response: requests.Response) -> None:
        if response.status_code == 200:
            self._record(name, response.json())

    def _record(self, name: str, body: Any) -> None:
        self.checked += 1
        why = self.reference.check(name, body)
        if why is not None:
            self.wrong.append(f"{name}: {why}")

    def until_right(self, since: float, saw: Counter[str]) -> tuple[float | None, int]:
        """Send until a right 200 comes back, counting every status in `saw`:
        (seconds since `since`, requests sent)."""
        sent = 0
        while time.monotonic() - since < RECOVERY_BUDGET_S:
            wrong_before = len(self.wrong)
            status = self.predict()
            saw[str(status)] += 1
            sent += 1
            if status == 200 and len(self.wrong) == wrong_before:
                return time.monotonic() - since, sent
            time.sleep(POLL_INTERVAL_S)
        return None, sent

    def warm(self) -> Environment:
        """One initialized environment, answering right."""
        recovery, _ = self.until_right(time.monotonic(), Counter())
        if recovery is None:
            raise RuntimeError("the endpoint does not answer right even without a fault")
        return next(e for e in self.pool.environments() if e.ready)

    # -- scenarios --------------------------------------------------------------------------

    def _scenario(
        self,
        name: str,
        injected: str,
        start: Callable[[], None],
        stop: Callable[[], None],
        *,
        fresh_environment: bool = True,
        during: int = 2,
        notes: str = "",
    ) -> FaultOutcome:
        if fresh_environment:
            self.pool.retire_idle()  # the next request starts a new environment, empty /tmp
        wrong0, checked0 = len(self.wrong), self.checked
        cold0, s3_0 = self.pool.stats.cold_starts, self.proxy.requests
        start()
        try:
            saw = Counter(str(self.predict()) for _ in range(during))
        finally:
            stop()
        ended = time.monotonic()
        failed = any(status != "200" for status in saw)
        recovery, sent = self.until_right(ended, saw)
        return FaultOutcome(
            name=name,
            injected=injected,
            client_saw=dict(sorted(saw.items())),
            wrong_answers=len(self.wrong) - wrong0,
            answers_checked=self.checked - checked0,
            recovered=recovery is not None,
            recovery_s=(round(recovery, 3) if failed else 0.0) if recovery is not None else None,
            requests_to_recover=sent if failed else 0,
            cold_starts=self.pool.stats.cold_starts - cold0,
            s3_requests=self.proxy.requests - s3_0,
            notes=notes,
        )

    def s3_slow(self) -> FaultOutcome:
        inits_before = len(self.recorder.init_reports())
        outcome = self._scenario(
            "S3 slow at INIT",
            f"proxy delays every S3 request by {SLOW_S3_DELAY_S:g} s",
            lambda: self.proxy.set("slow", delay_s=SLOW_S3_DELAY_S),
            self.proxy.clear,
            during=1,
        )
        inits = self.recorder.init_reports()[inits_before:]
        if inits:
            init_ms = inits[0]["record"]["metrics"]["durationMs"]
            outcome.notes = f"cold INIT took {init_ms / 1000:.1f} s (the delay included)"
        return outcome

    def s3_5xx(self) -> FaultOutcome:
        return self._scenario(
            "S3 5xx at INIT",
            "proxy answers every S3 request 503 SlowDown",
            lambda: self.proxy.set("error_5xx"),
            self.proxy.clear,
            notes="boto3 retries each GetObject (standard mode, 3 attempts); 503 + Retry-After",
        )

    def s3_reset(self) -> FaultOutcome:
        return self._scenario(
            "S3 connection reset at INIT",
            "proxy closes every S3 connection with a TCP RST",
            lambda: self.proxy.set("reset"),
            self.proxy.clear,
        )

    def s3_truncated(self) -> FaultOutcome:
        return self._scenario(
            "S3 truncated body at INIT",
            "proxy sends the full Content-Length and half the object, then closes",
            lambda: self.proxy.set("truncate"),
            self.proxy.clear,
        )

    def s3_other_object(self, other: bytes) -> FaultOutcome:
        outcome = self._scenario(
            "S3 returns another object",
            f"proxy answers GetObject with {len(other):,} other bytes (sha256 mismatch)",
            lambda: self.proxy.set("other_object", other_body=other),
            self.proxy.clear,
        )
        leftovers = [
            p
            for e in self.pool.environments()
            for p in (e.tmp_dir / "model-cache").glob("*")
            if hashlib.sha256(p.read_bytes()).hexdigest() != self.reference.model_sha256
        ]
        outcome.notes = f"untrusted files left in any cache: {len(leftovers)}"
        return outcome

    def tmp_full(self) -> FaultOutcome:
        return self._scenario(
            "/tmp full at INIT",  # noqa: S108 - the name of the fault, not a path we use
            "writes of new files in the model cache go to /dev/full (ENOSPC)",
            lambda: self.pool.set_faults(enospc=True),
            self.pool.set_faults,
        )

    def cache_damaged(self, how: str) -> FaultOutcome:
        """The cached model is deleted or corrupted between requests, then the environment is
        reset (its runtime restarts over the same /tmp): INIT must not trust what it finds."""
        env = self.warm()
        cached = env.tmp_dir / "model-cache" / f"{self.reference.model_sha256}.onnx"
        if not cached.is_file():
            raise RuntimeError(f"no cached model at {cached}")

        def damage() -> None:
            if how == "deleted":
                cached.unlink()
            else:
                data = bytearray(cached.read_bytes())
                data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
                cached.write_bytes(bytes(data))

        wrong0, checked0 = len(self.wrong), self.checked
        cold0, s3_0 = self.pool.stats.cold_starts, self.proxy.requests
        damage()
        saw = Counter(str(self.predict()) for _ in range(2))  # warm: the model is in memory
        # The runtime restarts (a reset, not a crash under a request): the next request runs
        # INIT over the damaged /tmp.
        self.pool.kill(env.id, wait=True)
        ended = time.monotonic()
        recovery, sent = self.until_right(ended, saw)
        intact = cached.is_file() and (
            hashlib.sha256(cached.read_bytes()).hexdigest() == self.reference.model_sha256
        )
        return FaultOutcome(
            name=f"cached model {how} between requests",
            injected=f"the model file in the environment's /tmp {how}, then the runtime reset",
            client_saw=dict(sorted(saw.items())),
            wrong_answers=len(self.wrong) - wrong0,
            answers_checked=self.checked - checked0,
            recovered=recovery is not None,
            recovery_s=round(recovery, 3) if recovery is not None else None,
            requests_to_recover=sent,
            cold_starts=self.pool.stats.cold_starts - cold0,
            s3_requests=self.proxy.requests - s3_0,
            notes="re-downloaded and verified: "
            + ("cache intact again" if intact else "cache NOT restored"),
        )

    def killed_mid_request(self) -> FaultOutcome:
        env = self.warm()
        wrong0, checked0 = len(self.wrong), self.checked
        cold0, s3_0 = self.pool.stats.cold_starts, self.proxy.requests
        self.recorder.started.clear()

        def kill_when_started() -> None:
            if self.recorder.started.wait(timeout=60):
                time.sleep(0.05)  # inside the handler: a batch of 8 takes far longer
                self.pool.kill(env.id)

        killer = threading.Thread(target=kill_when_started, daemon=True)
        killer.start()
        response = self.predict_batch()
        killed_at = time.monotonic()
        killer.join()
        saw = Counter([str(response.status_code)])
        recovery, sent = self.until_right(killed_at, saw)
        return FaultOutcome(
            name="environment killed mid-request",
            injected="SIGKILL to the environment's runtime while it runs a batch of 8",
            client_saw=dict(saw),
            wrong_answers=len(self.wrong) - wrong0,
            answers_checked=self.checked - checked0,
            recovered=recovery is not None,
            recovery_s=round(recovery, 3) if recovery is not None else None,
            requests_to_recover=sent,
            cold_starts=self.pool.stats.cold_starts - cold0,
            s3_requests=self.proxy.requests - s3_0,
            notes=f"body: {response.text[:60]}",
        )


@contextlib.contextmanager
def fault_lab(
    model_dir: Path,
    reference: Reference,
    photos: list[Path],
    *,
    template: Path | None = None,
) -> Iterator[FaultLab]:
    """S3 server -> fault proxy -> function environments -> gateway, all on 127.0.0.1."""
    recorder = _Recorder()
    with (
        local_s3() as s3,
        faulty_s3_proxy(s3.endpoint_url) as proxy,
        local_endpoint(
            model_dir,
            template=template,
            throttle=False,
            s3=s3,
            function_s3_endpoint=proxy.endpoint_url,
            fault_injection=True,
            concurrency=Concurrency(limit=2, provisioned=0, source="fault scenarios"),
            on_platform_event=recorder,
        ) as ep,
    ):
        yield FaultLab(ep, proxy, reference, photos, recorder)


def run_all(lab: FaultLab, other_object: bytes, log: Callable[[str], None]) -> list[FaultOutcome]:
    scenarios: list[Callable[[], FaultOutcome]] = [
        lab.s3_slow,
        lab.s3_5xx,
        lab.s3_reset,
        lab.s3_truncated,
        lambda: lab.s3_other_object(other_object),
        lab.tmp_full,
        lambda: lab.cache_damaged("deleted"),
        lambda: lab.cache_damaged("corrupted"),
        lab.killed_mid_request,
    ]
    outcomes = []
    for scenario in scenarios:
        outcome = scenario()
        log(
            f"  {outcome.name:<40} saw {outcome.client_saw}, wrong {outcome.wrong_answers}, "
            f"recovered in {outcome.recovery_s} s"
        )
        outcomes.append(outcome)
    return outcomes
