"""Official NVIDIA NeMo speaker-recognition configs, used to build untrained models (``--random-init``).

Copied unchanged from NVIDIA/NeMo ``examples/speaker_tasks/recognition/conf/`` (Apache-2.0):
titanet-large.yaml, titanet-small.yaml, ecapa_tdnn.yaml, SpeakerNet_verification_3x2x256.yaml,
SpeakerNet_recognition_3x2x512.yaml.

titanet-medium.yaml is ours: NeMo ships no TitaNet-M config. It is titanet-large.yaml with
``model_defaults.filters: 512`` (the TitaNet paper's M width; S = 256 as in titanet-small.yaml, L = 1024),
everything else unchanged.
"""
