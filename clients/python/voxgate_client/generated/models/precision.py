from enum import StrEnum


class Precision(StrEnum):
    FP16 = "fp16"
    FP32 = "fp32"
    INT8 = "int8"

    def __str__(self) -> str:
        return str(self.value)
