"""Measuring a model on labelled trials: error rates (EER, minDCF, FRR at FAR), embedding files as the
service does, calibration and cohorts."""
