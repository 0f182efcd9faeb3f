from enum import StrEnum


class ThresholdSource(StrEnum):
    KEY = "key"
    MODEL = "model"
    REQUEST = "request"
    SERVICE = "service"
    TENANT = "tenant"

    def __str__(self) -> str:
        return str(self.value)
