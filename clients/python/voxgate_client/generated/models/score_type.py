from enum import StrEnum


class ScoreType(StrEnum):
    ASNORM = "asnorm"
    COSINE = "cosine"

    def __str__(self) -> str:
        return str(self.value)
