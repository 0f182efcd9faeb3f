"""What every other package stands on: errors, settings, identifier and limit rules, crypto, vectors,
logging, memory and paths. Imports nothing else of ``app``."""
