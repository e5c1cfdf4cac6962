"""Eval settings: which trainers to wait for, where the runs and the data are, where promotions go."""
from __future__ import annotations

from pydantic import field_validator

from flts import forecasters
from flts.events import ModelTraining
from flts.settings import CommaList, Flag, ProcessedBucket, PromotionBucket, Tracking, knob


class EvalSettings(Tracking, ProcessedBucket, PromotionBucket):
    expected_types: CommaList = knob("EXPECTED_MODEL_TYPES", forecasters.names(),
                                     "the MODEL_TYPEs whose runs a promotion waits for (= the deployed trainers)")
    search_retries: int = knob("PROMOTION_SEARCH_RETRIES", 5,
                               "MLflow searches for the other types' runs before giving up for this event", ge=1)
    search_delay: float = knob("PROMOTION_SEARCH_DELAY_SEC", 1.0, "seconds between those searches", ge=0)
    lookback_runs: int = knob("LOOKBACK_RUNS", 200, "newest MLflow runs of a config hash searched", ge=1)
    ensemble_max_members: int = knob("ENSEMBLE_MAX_MEMBERS", 3, "most candidates an ensemble (their mean, "
                                     "a candidate when it beats the best one on validation) averages; below 2 = none",
                                     ge=0)
    register_champion: Flag = knob("REGISTER_CHAMPION", True,
                                   "register the winner in the MLflow model registry with the alias champion")

    @field_validator("expected_types")
    @classmethod
    def _upper_case(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.upper() for t in types)

    def experiment_for(self, request: ModelTraining) -> str:
        return request.experiment or self.experiment_name or f"flts-{request.identifier}"
