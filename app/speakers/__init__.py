"""The rules of enroll, verify and identify: decision policy, scoring (cosine, AS-Norm, calibrated LLR),
the operations and their typed results. No HTTP here."""
