"""Health and learned quality around the core: what decisions consult, what outcomes feed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from routing_sidecar import domain
from routing_sidecar.core.health import Detection, HealthBook, HealthStats, PerfRow
from routing_sidecar.core.learning import (
    LearnedStats,
    LearningSnapshot,
    QualityBook,
    QualityRow,
    ShareRow,
    score_of,
)
from routing_sidecar.ports import QualityObservation
from routing_sidecar.settings import RouterSettings

HEALTH_BOOK = "health"
QUALITY_BOOK = "quality"
LEARNED_BOOKS = (HEALTH_BOOK, QUALITY_BOOK)


@dataclass(frozen=True, slots=True)
class LearnerReport:
    """What health and learning know right now, for GetRoutingStats."""

    health: tuple[HealthStats, ...] = ()
    detection: Mapping[str, Detection] = field(default_factory=dict)
    learned: tuple[LearnedStats, ...] = ()


class Learner:
    """Owns the HealthBook and QualityBook; the only place the service touches either."""

    def __init__(self, health: HealthBook, quality: QualityBook) -> None:
        self.health = health
        self.quality = quality
        # Fleet mode: observations waiting to be pushed to the fleet's sums, and a hook that
        # wakes the fleet sync (breaker changes are published at once).
        self.shared: list[QualityObservation] | None = None
        self.on_observed: Callable[[], None] | None = None

    @classmethod
    def of(cls, settings: RouterSettings) -> Learner:
        """Fresh books for a config: its health settings, its learning settings and priors."""
        priors = {name: m.quality for name, m in settings.models.items()}
        return cls(HealthBook(settings.health),
                   QualityBook(settings.learning, lambda name: priors.get(name, 0.5)))

    def reconfigure(self, settings: RouterSettings) -> None:
        """Swap in books with a reloaded config's settings and priors, keeping what was learned."""
        fresh = Learner.of(settings)
        fresh.health.restore(self.health.snapshot())
        fresh.quality.restore(self.quality.snapshot())
        self.health, self.quality = fresh.health, fresh.quality

    def after_decision(self, task_type: str, model: domain.ModelSpec | None, explored: bool,
                       now: float) -> None:
        """Consume a half-open probe and count exploration, for real (not dry-run) decisions."""
        if model is not None:
            self.health.on_routed(model, now)
        self.quality.note_decision(task_type, explored and model is not None)

    def observe(
        self,
        task_type: str,
        labels: Mapping[str, str],
        attempts: Sequence[domain.Attempt],
        success: bool,
        quality: float | None,
        now: float,
    ) -> None:
        """Feed a recorded outcome: every attempt to health, the final model to learning."""
        if not attempts:
            return
        self.health.record_outcome(attempts, now, lane=labels.get("lane"))
        final = attempts[-1]
        if final.status is not domain.AttemptStatus.CANCELLED or quality is not None:
            self.quality.observe(task_type, final.model, success, quality)
            if self.shared is not None:
                self.shared.append(QualityObservation(task_type, final.model,
                                                      score_of(success, quality), success,
                                                      quality is not None))
        if self.on_observed is not None:
            self.on_observed()

    def observe_attempts(self, labels: Mapping[str, str], attempts: Sequence[domain.Attempt],
                         now: float) -> None:
        """Feed attempts to health and breakers only: an answer that arrived is no grade."""
        if not attempts:
            return
        self.health.record_outcome(attempts, now, lane=labels.get("lane"))
        if self.on_observed is not None:
            self.on_observed()

    def grade(self, task_type: str, model: str, success: bool, quality: float) -> None:
        """A later grade of a recorded answer teaches the model that produced it."""
        self.quality.observe(task_type, model, success, quality)
        if self.shared is not None:
            self.shared.append(QualityObservation(task_type, model,
                                                  score_of(success, quality), success, True))
        if self.on_observed is not None:
            self.on_observed()

    def report(self, now: float, providers: Iterable[str]) -> LearnerReport:
        """Health rows, detection states (every catalog provider listed) and learned quality."""
        return LearnerReport(
            health=tuple(self.health.stats(now)),
            detection=self.health.detection(now, providers=providers),
            learned=tuple(self.quality.stats()),
        )

    def dump(self) -> dict[str, str]:
        """Both books as JSON, keyed by book name, for the store."""
        snap = self.quality.snapshot()
        return {
            HEALTH_BOOK: json.dumps([dataclasses.asdict(r) for r in self.health.snapshot()]),
            QUALITY_BOOK: json.dumps({
                "estimates": [dataclasses.asdict(r) for r in snap.estimates],
                "shares": [dataclasses.asdict(r) for r in snap.shares],
                "pooled": [dataclasses.asdict(r) for r in snap.pooled],
            }),
        }

    def load(self, books: Mapping[str, str | None]) -> None:
        """Restore both books from what `dump` wrote; a missing book starts from the priors."""
        health = books.get(HEALTH_BOOK)
        if health:
            self.health.restore([PerfRow(**row) for row in json.loads(health)])
        quality = books.get(QUALITY_BOOK)
        if quality:
            raw = json.loads(quality)
            self.quality.restore(LearningSnapshot(
                estimates=tuple(QualityRow(**r) for r in raw["estimates"]),
                shares=tuple(ShareRow(**r) for r in raw["shares"]),
                pooled=tuple(QualityRow(**r) for r in raw.get("pooled", ())),
            ))
